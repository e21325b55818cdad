"""Compare builds of the native module on a hello-world app (worker alone).

    python3 compare_modules.py NAME=PATH/TO/lib.so [NAME=PATH ...] [--rounds 3] [--seconds 4]

For each build: assemble a runtime dir like the bridge does, start one worker
(1 thread), drive it with load.py over one kept-alive connection, and report
req/s and the worker's own CPU time per request (from /proc, which is less
sensitive to a busy machine than req/s). Rounds alternate between the builds.
"""
import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PKG = os.path.join(HERE, "..", "python", "fcgibridge_worker")
BOOT = "import sys; sys.path.insert(0, sys.argv.pop(1)); import fcgibridge_worker.main as m; m.main()"
APP = '''def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"Hello, World!"]
'''


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_one(lib, seconds, python):
    d = tempfile.mkdtemp()
    try:
        pkg = os.path.join(d, "python", "fcgibridge_worker")
        os.makedirs(pkg)
        for name in open(os.path.join(PKG, "FILES")).read().split():
            shutil.copy(os.path.join(PKG, name), pkg)
        shutil.copy(lib, os.path.join(pkg, "_native.abi3.so"))
        with open(os.path.join(d, "hello.py"), "w") as f:
            f.write(APP)
        sock_path = os.path.join(d, "w.sock")
        s = socket.socket(socket.AF_UNIX)
        s.bind(sock_path)
        s.listen(16)
        env = dict(os.environ, FCGIBRIDGE_APP="hello:application", FCGIBRIDGE_THREADS="1",
                   FCGIBRIDGE_PDEATHSIG="0")
        p = subprocess.Popen([python, "-u", "-c", BOOT, os.path.join(d, "python")],
                             stdin=s.fileno(), env=env, cwd=d)
        s.close()
        time.sleep(1.0)
        c0 = cpu_seconds(p.pid)
        out = subprocess.run([sys.executable, os.path.join(HERE, "load.py"), sock_path,
                              "--conns", "1", "--seconds", str(seconds)],
                             capture_output=True, text=True, check=True).stdout
        c1 = cpu_seconds(p.pid)
        p.terminate()
        p.wait()
        rps = float(out.split(":")[1].split()[0])
        return rps, (c1 - c0) / (rps * seconds) * 1e6
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("builds", nargs="+", help="NAME=path/to/libfcgibridge_worker.so")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--python", default=sys.executable)
    a = ap.parse_args()
    builds = [b.split("=", 1) for b in a.builds]
    res = {name: [] for name, _ in builds}
    for _ in range(a.rounds):
        for name, lib in builds:
            res[name].append(run_one(lib, a.seconds, a.python))
    for name, runs in res.items():
        best = max(r for r, _ in runs)
        cpu = min(c for _, c in runs)
        print("%-12s req/s %s (best %.0f)   worker CPU us/req %s (best %.2f)" % (
            name, " ".join("%.0f" % r for r, _ in runs), best,
            " ".join("%.2f" % c for _, c in runs), cpu))


if __name__ == "__main__":
    main()
