"""What Django's removed `django.core.servers.fastcgi.runfastcgi` did, as far as a
deployment script can tell: options as key=value words or keywords, then flup's threaded
or forking server around Django's WSGI handler."""
import sys


def runfastcgi(argset=(), **kwargs):
    options = {"protocol": "fcgi", "method": "prefork", "daemonize": None, "maxrequests": 0,
               "maxspare": 5, "minspare": 2, "maxchildren": 50, "host": None, "port": None,
               "socket": None, "debug": None}
    for word in argset:
        key, _, value = word.partition("=")
        options[key.lower()] = value
    options.update(kwargs)
    import django
    from django.core.handlers.wsgi import WSGIHandler

    django.setup(set_prefix=False)
    if options["method"] in ("prefork", "fork"):
        from flup.server.fcgi_fork import WSGIServer
        wsgi_opts = {"maxSpare": int(options["maxspare"]), "minSpare": int(options["minspare"]),
                     "maxChildren": int(options["maxchildren"]), "maxRequests": int(options["maxrequests"])}
    elif options["method"] in ("thread", "threaded"):
        from flup.server.fcgi import WSGIServer
        wsgi_opts = {"maxSpare": int(options["maxspare"]), "minSpare": int(options["minspare"]),
                     "maxThreads": int(options["maxchildren"])}
    else:
        sys.exit("unknown method %r" % options["method"])
    wsgi_opts["debug"] = options["debug"] is not None
    if options["host"] and options["port"]:
        wsgi_opts["bindAddress"] = (options["host"], int(options["port"]))
    elif options["socket"]:
        wsgi_opts["bindAddress"] = options["socket"]
    WSGIServer(WSGIHandler(), **wsgi_opts).run()
