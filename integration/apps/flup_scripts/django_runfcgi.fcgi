#!/usr/bin/python3
# The mysite.fcgi of old Django deployments (Django < 1.9 shipped runfastcgi; the test
# project's `legacy_django_fcgi` module stands in for django.core.servers.fastcgi).
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "djproject"))
sys.path.insert(0, os.path.join(here, "lib"))

os.chdir(os.path.join(here, "..", "djproject"))
os.environ["DJANGO_SETTINGS_MODULE"] = "mysite.settings"

from legacy_django_fcgi import runfastcgi  # noqa: E402

runfastcgi(method="threaded", daemonize="false", maxrequests=500)
