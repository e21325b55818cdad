"""A tiny app factory for moin_style.fcgi."""


def make_wiki(name):
    def wiki(environ, start_response):
        page = environ.get("PATH_INFO", "/").strip("/") or "FrontPage"
        body = ("%s: page %s" % (name, page)).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    return wiki
