"""One bridge, pools on two (or more) Python versions at once."""
import json
import os
import shutil
import subprocess

import pytest

from harness import APPS, free_ports, make_bridge, pool

CANDIDATES = ["3.13", "3.12", "3.10", "3.9"]


def _version_of(exe):
    try:
        out = subprocess.run([exe, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def find_pythons():
    """{"3.13": (executable, "3.13.0"), ...} for the versions found at run time (not python3's)."""
    default = _version_of(shutil.which("python3") or "python3")
    found = {}
    for v in CANDIDATES:
        cands = []
        if shutil.which("pyenv"):
            r = subprocess.run(["pyenv", "prefix", v], capture_output=True, text=True)
            if r.returncode == 0 and r.stdout.strip():
                cands.append(os.path.join(r.stdout.strip().splitlines()[0], "bin", f"python{v}"))
        w = shutil.which(f"python{v}")
        if w:
            cands.append(w)  # may be a pyenv shim that fails: _version_of checks it runs
        for c in cands:
            ver = _version_of(c)
            if ver and ver.startswith(v + ".") and ver != default:
                found[v] = (c, ver)
                break
    return default, found


DEFAULT, FOUND = find_pythons()


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    if not FOUND:
        pytest.skip(f"no Python besides python3 ({DEFAULT}) found: tried {CANDIDATES} via pyenv and PATH")
    workdir = tmp_path_factory.mktemp("pythons")
    pools = {"py-default": pool(str(APPS / "edge_app.py"), processes=1, threads=2)}
    for v, (exe, _) in FOUND.items():
        pools["py" + v.replace(".", "")] = pool(str(APPS / "edge_app.py"), python=exe, processes=1, threads=2)
    port = free_ports(1)[0]
    routes = [{"host": name + ".test", "pool": name} for name in pools]
    b = make_bridge(workdir, pools, {"fcgi-tcp": {"fastcgi": f"127.0.0.1:{port}", "routes": routes}})
    try:
        b.start()
        b.wait_ready([("fcgi-tcp", "/health", "py-default.test")])
        yield b
    finally:
        b.stop()


def _version(b, pool_name):
    resp = b.request("/version", pool=pool_name + ".test")
    assert resp.status == 200, resp.stdout[:2000]
    return json.loads(resp.body)


def test_found_a_second_python():
    if not FOUND:
        pytest.skip(f"no Python besides python3 ({DEFAULT}) found: tried {CANDIDATES} via pyenv and PATH")
    assert any(v in FOUND for v in ("3.12", "3.13")), \
        f"the issue asks for pyenv 3.12 or 3.13 next to python3; found {FOUND}"


@pytest.mark.parametrize("version", CANDIDATES)
def test_two_pythons_through_one_bridge(multi, version):
    if version not in FOUND:
        pytest.skip(f"python{version} not found")
    exe, full = FOUND[version]
    alt = _version(multi, "py" + version.replace(".", ""))
    default = _version(multi, "py-default")
    assert ".".join(map(str, alt["info"])) == full
    assert ".".join(map(str, default["info"])) == DEFAULT
    assert alt["info"][:2] != default["info"][:2]
    assert alt["version"].split()[0] == full
    # both pools keep serving side by side
    for _ in range(3):
        assert _version(multi, "py" + version.replace(".", ""))["info"] == alt["info"]
        assert _version(multi, "py-default")["info"] == default["info"]
