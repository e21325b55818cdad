#!/usr/bin/env python3
# -*- coding: utf-8 -*-
# An issue-tracker-style deployment script: the real work is in the package's FastCGI
# front end; anything that goes wrong is shown as a CGI error page.
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))

try:
    os.environ.setdefault("TRACISH_ENV", "/srv/tracker")
    from tracish.web import fcgi_frontend
    fcgi_frontend.run()
except SystemExit:
    raise
except Exception as e:
    print("Status: 500 Internal Server Error")
    print("Content-Type: text/plain")
    print()
    print("Oops... the tracker failed: %s" % e)
