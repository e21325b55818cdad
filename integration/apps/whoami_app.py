"""Reports the worker process's identity and limits as JSON (integration/test_isolation.py)."""
import json
import os
import resource
import time

# CPU time to spend while being imported (a preload template's, in test_isolation.py).
_burn_until = time.process_time() + float(os.environ.get("WHOAMI_IMPORT_CPU", "0"))
while time.process_time() < _burn_until:
    pass


def application(environ, start_response):
    mask = os.umask(0)
    os.umask(mask)
    body = json.dumps({
        "pid": os.getpid(),
        "uid": os.getuid(), "euid": os.geteuid(),
        "gid": os.getgid(), "egid": os.getegid(),
        "groups": sorted(os.getgroups()),
        "umask": mask,
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
        "core": resource.getrlimit(resource.RLIMIT_CORE),
        "nproc": resource.getrlimit(resource.RLIMIT_NPROC),
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
        "cwd": os.getcwd(),
        "environ": dict(os.environ),
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
