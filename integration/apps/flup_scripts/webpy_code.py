#!/usr/bin/env python3
# A web.py application as its cookbook deploys it behind nginx with spawn-fcgi: web.py's
# runwsgi is pointed at runfcgi, and app.run() starts flup's server.
import web

urls = ("/(.*)", "hello")
app = web.application(urls, globals())


class hello:
    def GET(self, name):
        return "web.py says hello to %s" % (name or "nobody")


web.wsgi.runwsgi = lambda func, addr=None: web.wsgi.runfcgi(func, addr)

if __name__ == "__main__":
    app.run()
