#!/usr/bin/env python3
# A wiki-engine-style FastCGI script: the app object is built by a factory, and the
# server is told where to listen itself (an external FastCGI server started by an
# init script, the web server connecting to its socket).
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))

from wikiengine import make_wiki  # noqa: E402

wiki = make_wiki(name="FlupWiki")

from flup.server.fcgi import WSGIServer  # noqa: E402

WSGIServer(wiki, bindAddress="/run/wiki/wiki.sock", umask=0o007, multiplexed=False).run()
