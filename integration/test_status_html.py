"""The HTML status page in a real headless Chromium: a screenshot of the right size that
is not blank, and a DOM dump that names every pool. Skipped when Chromium is missing."""
from __future__ import annotations

import shutil
import struct
import subprocess
import zlib

import pytest

from harness import APPS, free_ports, make_bridge

WIDTH, HEIGHT = 1200, 800


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


pytestmark = pytest.mark.skipif(chromium() is None, reason="chromium is not installed (apt-get install chromium)")


def chromium_args(tmp_path, *extra):
    return [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}", *extra]


def decode_png(data: bytes):
    """(width, height, rows of RGB(A) bytes) of an 8-bit RGB or RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6), f"unexpected PNG format depth={depth} color={color}"
            bpp = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, bpp, rows


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("status-html")
    fport, sport = free_ports(2)
    pools = {
        "shop-frontend": {"app": str(APPS / "edge_app.py"), "processes": 2, "threads": 2},
        "billing-api": {"app": str(APPS / "edge_app.py"), "processes": 1, "threads": 1},
    }
    listeners = {"front": {"fastcgi": f"127.0.0.1:{fport}",
                           "routes": [{"prefix": "/billing", "pool": "billing-api"}, {"pool": "shop-frontend"}]}}
    b = make_bridge(workdir, pools, listeners,
                    bridge_extra={"status": {"listen": f"127.0.0.1:{sport}", "path": "/status"}})
    try:
        b.start()
        b.wait_ready([("front", "/health", "x"), ("front", "/billing/health", "x")])
        for _ in range(3):
            b.request("/health", listener="front")
        yield b, f"http://127.0.0.1:{sport}/status?html", workdir
    finally:
        b.stop()


def test_dom_names_every_pool(page, tmp_path):
    _, url, _ = page
    r = subprocess.run(chromium_args(tmp_path, "--dump-dom", url), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    dom = r.stdout
    assert "fcgibridge" in dom
    for name in ("shop-frontend", "billing-api"):
        assert f"Workers of {name}" in dom, dom[:3000]
    assert '<table id="pools">' in dom


def test_screenshot_is_not_blank(page, tmp_path):
    _, url, workdir = page
    png = workdir / "status.png"
    r = subprocess.run(chromium_args(tmp_path, f"--screenshot={png}", f"--window-size={WIDTH},{HEIGHT}", url),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and png.exists(), r.stderr[-2000:]
    width, height, bpp, rows = decode_png(png.read_bytes())
    assert (width, height) == (WIDTH, HEIGHT)
    # Text and table borders: many distinct colours, and a good share of non-white pixels
    # in the upper half where the tables are.
    colours, dark = set(), 0
    for row in rows[: HEIGHT // 2: 4]:
        for x in range(0, width * bpp, bpp * 2):
            px = row[x:x + 3]
            colours.add(px)
            if sum(px) < 600:
                dark += 1
    assert len(colours) > 20, f"only {len(colours)} colours: a blank page?"
    assert dark > 500, f"only {dark} non-white samples"
