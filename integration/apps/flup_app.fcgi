#!/usr/bin/env python3
"""An unmodified-style flup FastCGI script serving the edge app: flup finds its
listening socket on fd 0, as the FastCGI spec's spawned mode has it."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from flup.server.fcgi import WSGIServer  # noqa: E402

from edge_app import application  # noqa: E402

if __name__ == "__main__":
    WSGIServer(application).run()
