import json  # noqa: F401

raise ImportError("this app cannot be imported: missing dependency frobnicate")
