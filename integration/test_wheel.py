"""The wheel: scripts/build-wheel builds it with maturin, `pip install` puts the daemon and
its native worker module into a fresh virtualenv's bin/, and the demo app served by that
daemon answers 200. Skipped at once when maturin is not installed.

FCGIBRIDGE_WHEEL_PROFILE=release tests the optimised wheel (default here: dev, which
reuses the debug build and is much faster on a busy machine)."""
from __future__ import annotations

import os
import shutil
import subprocess
import venv

import pytest

from harness import REPO, LogFile, can_connect, free_ports, stop_process, to_yaml, wait_until

pytestmark = [pytest.mark.skipif(shutil.which("maturin") is None, reason="maturin is not installed (pip install maturin)"),
              pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheels")
    env = dict(os.environ, FCGIBRIDGE_WHEEL_PROFILE=os.environ.get("FCGIBRIDGE_WHEEL_PROFILE", "dev"))
    r = subprocess.run([str(REPO / "scripts" / "build-wheel"), str(out)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=850)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    wheels = sorted(out.glob("fcgibridge-*.whl"))
    assert len(wheels) == 1, wheels
    venv_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True).create(venv_dir)
    r = subprocess.run([str(venv_dir / "bin" / "python"), "-m", "pip", "install", "--no-index", "--no-deps",
                        "-q", str(wheels[0])], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return venv_dir


def test_wheel_puts_binary_and_worker_module_in_bin(installed):
    bindir = installed / "bin"
    assert os.access(bindir / "fcgibridge", os.X_OK)
    assert (bindir / "libfcgibridge_worker.so").is_file()
    r = subprocess.run([str(bindir / "fcgibridge"), "--version"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("fcgibridge "), r.stderr


def test_demo_runs_from_the_wheel(installed, tmp_path):
    bindir = installed / "bin"
    shutil.copy(REPO / "examples" / "demo" / "app.py", tmp_path / "app.py")
    fport, = free_ports(1)
    conf = tmp_path / "conf.d"
    conf.mkdir()
    pool = {"app": "../app.py", "processes": 1, "threads": 2}
    if os.geteuid() == 0:
        pool["allow-root"] = True
    (conf / "10-demo.yaml").write_text(to_yaml({
        "pools": {"demo": pool},
        "listeners": {"demo-fastcgi": {"fastcgi": f"127.0.0.1:{fport}", "pool": "demo"}},
    }))
    # Nothing from the source tree: the binary must find the worker module next to itself.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FCGIBRIDGE_")}
    env.update(NO_COLOR="1", PATH=f"{bindir}:/usr/bin:/bin")
    log = LogFile(tmp_path / "bridge.log")
    with open(log.path, "ab") as logf:
        proc = subprocess.Popen([str(bindir / "fcgibridge"), "run", "--config", str(conf)], cwd=tmp_path,
                                env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def up():
            if proc.poll() is not None:
                raise AssertionError("daemon exited:\n" + log.text())
            return can_connect(("127.0.0.1", fport))
        wait_until(up, 60, what="the demo listener")

        def answered():
            r = subprocess.run([str(bindir / "fcgibridge"), "request", f"127.0.0.1:{fport}", "/"],
                               capture_output=True, text=True, timeout=60, env=env)
            return r.returncode == 0 and r.stdout.startswith("HTTP/1.1 200") and r
        r = wait_until(answered, 120, 0.25, what="200 from the demo app")
        assert "Hello from fcgibridge!" in r.stdout, r.stdout
    finally:
        stop_process(proc)
