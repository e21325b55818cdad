"""The HTML status page in a real headless Chromium: a screenshot of the right size that
is not blank, a DOM dump that names every pool, and, driven over the DevTools protocol,
the live charts of every pool under traffic at a desktop and a phone viewport (screenshots
in the test's tmp dir), with no request leaving the loopback. Skipped when Chromium is
missing."""
from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import struct
import subprocess
import threading
import time
import urllib.parse
import zlib

import pytest

from harness import APPS, free_ports, make_bridge, wait_until

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


class Traffic(threading.Thread):
    """Requests through the FastCGI listener until stopped: mostly quick ones, some slow,
    some failing (500), and bursts on the one-thread pool with no queue (503)."""

    def __init__(self, bridge):
        super().__init__(daemon=True)
        self.bridge, self.stop_flag, self.count, self.errors = bridge, threading.Event(), 0, []

    def one(self, path, query=""):
        try:
            self.bridge.request(path, query=query, listener="front")
            self.count += 1
        except Exception as e:  # noqa: BLE001 - a refused request is part of the load
            self.errors.append(repr(e))

    def run(self):
        i = 0
        while not self.stop_flag.is_set():
            i += 1
            self.one("/health")
            if i % 3 == 0:
                self.one("/sleep", f"s={0.01 * (i % 7):.2f}")
            if i % 10 == 0:
                self.one("/raise-before")
            if i % 15 == 0:
                # billing-api has one thread and queue-size 0: the second request gets 503.
                slow = threading.Thread(target=self.one, args=("/billing/sleep", "s=0.4"))
                slow.start()
                time.sleep(0.1)
                self.one("/billing/health")
                slow.join(30)
            self.one("/billing/health")
            self.stop_flag.wait(0.05)

    def stop(self):
        self.stop_flag.set()
        self.join(60)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("status-html")
    fport, sport = free_ports(2)
    pools = {
        "shop-frontend": {"app": str(APPS / "edge_app.py"), "processes": 2, "threads": 2},
        "billing-api": {"app": str(APPS / "edge_app.py"), "processes": 1, "threads": 1, "queue-size": 0},
    }
    listeners = {"front": {"fastcgi": f"127.0.0.1:{fport}",
                           "routes": [{"prefix": "/billing", "pool": "billing-api"}, {"pool": "shop-frontend"}]}}
    b = make_bridge(workdir, pools, listeners,
                    bridge_extra={"status": {"listen": f"127.0.0.1:{sport}", "path": "/status"}})
    traffic = None
    try:
        b.start()
        b.wait_ready([("front", "/health", "x"), ("front", "/billing/health", "x")])
        for _ in range(3):
            b.request("/health", listener="front")
        traffic = Traffic(b)
        traffic.start()
        yield b, f"http://127.0.0.1:{sport}/status?html", workdir
    finally:
        if traffic:
            traffic.stop()
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


class DevTools:
    """Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe:
    JSON messages separated by NUL, Chromium reads fd 3 and writes fd 4)."""

    def __init__(self, tmp_path):
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def fds_3_and_4():
            # Out of the way first, so that neither dup2 clobbers the other's source.
            a = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(chromium_args(tmp_path, "--remote-debugging-pipe", "--hide-scrollbars", "about:blank"),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(tmp_path / "chromium.log", "wb"),
                                     close_fds=False, preexec_fn=fds_3_and_4, start_new_session=True)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._next_id, self._replies, self.events = 0, {}, []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def _read(self):
        buf = b""
        while True:
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                break
            buf += chunk
            *messages, buf = buf.split(b"\0")
            with self._cond:
                for m in messages:
                    msg = json.loads(m)
                    if "id" in msg:
                        self._replies[msg["id"]] = msg
                    else:
                        self.events.append(msg)
                self._cond.notify_all()

    def call(self, method, params=None, session=True, timeout=60):
        with self._cond:
            self._next_id += 1
            mid = self._next_id
        msg = {"id": mid, "method": method, "params": params or {}}
        if session and getattr(self, "session", None):
            msg["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self._replies or self.proc.poll() is not None, timeout):
                raise TimeoutError(f"no answer to {method} within {timeout}s")
            reply = self._replies.pop(mid, None)
        if reply is None:
            raise RuntimeError(f"chromium exited during {method}")
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def evaluate(self, expression):
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in r:
            raise RuntimeError(r["exceptionDetails"])
        return r["result"].get("value")

    def requested_urls(self):
        with self._cond:
            return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def close(self):
        try:
            self.call("Browser.close", session=False, timeout=10)
        except Exception:  # noqa: BLE001 - killed below anyway
            pass
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self._to_chrome)


# What the page shows, read in the browser: every pool card, its charts and their lines.
CHARTS_JS = """JSON.stringify([...document.querySelectorAll('section.pool-card')].map(card => ({
  pool: card.dataset.pool,
  charts: [...card.querySelectorAll('svg.chart')].map(svg => ({
    cls: svg.getAttribute('class'),
    paths: [...svg.querySelectorAll('path.line')].map(p => p.getAttribute('d') || ''),
    bars: Object.fromEntries([...svg.querySelectorAll('path.bar')].map(p => [p.dataset.series, p.getAttribute('d')])),
    box: svg.getBoundingClientRect().width,
  })),
  tiles: Object.fromEntries([...card.querySelectorAll('.tile')].map(t => [t.dataset.counter, t.className])),
})))"""

# Charts drawn as lines (the sixth, "events", has bars only where something happened).
LINE_CHARTS = ("rps", "latency", "queue", "workers", "errors")
POOLS = ("shop-frontend", "billing-api")


def charts_drawn(cards, points=3):
    """Every pool has its five charts, each with a line through at least `points` samples."""
    by_pool = {c["pool"]: c for c in cards}
    if set(by_pool) != set(POOLS):
        return False
    for card in by_pool.values():
        kinds = sorted(c["cls"].split()[1] for c in card["charts"])
        if kinds != sorted(LINE_CHARTS + ("events",)):
            return False
        for chart in card["charts"]:
            if "events" in chart["cls"]:
                continue
            if not chart["paths"] or not all(d.startswith("M") for d in chart["paths"]):
                return False
        rps = next(c for c in card["charts"] if "rps" in c["cls"])
        if rps["paths"][0].count("L") < points - 1:
            return False
    return True


def load(dt, url, width, height, mobile, scale):
    dt.call("Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": scale, "mobile": mobile})
    dt.call("Page.navigate", {"url": url})

    def drawn():
        # The page reloads itself every 2 s: an evaluation may land between two documents.
        try:
            cards = json.loads(dt.evaluate(CHARTS_JS) or "[]")
        except RuntimeError:
            return None
        return cards if charts_drawn(cards) else None

    return wait_until(drawn, 120, 0.25, what="every pool's charts drawn with three samples")


def screenshot(dt, path):
    """What the screen shows (`path`) and the whole page (`*-full.png`); the size of the first."""
    shot = dt.call("Page.captureScreenshot", {"format": "png"})
    path.write_bytes(base64.b64decode(shot["data"]))
    size = dt.call("Page.getLayoutMetrics")["cssContentSize"]
    full = dt.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                              "clip": {"x": 0, "y": 0, "width": size["width"],
                                                       "height": size["height"], "scale": 1}})
    path.with_name(path.stem + "-full.png").write_bytes(base64.b64decode(full["data"]))
    width, height, _, rows = decode_png(path.read_bytes())
    colours = {r[i:i + 3] for r in rows[::8] for i in range(0, len(r), 12)}
    assert len(colours) > 20, f"{path.name}: only {len(colours)} colours: a blank page?"
    return width, height


def highlighted(dt):
    """The cards once the traffic's failures show: the 500s moved shop-frontend's 5xx
    counter in the last minute, the 503s billing-api's, and they are bars on its events
    chart; None before (or while the page reloads)."""
    try:
        cards = {c["pool"]: c for c in json.loads(dt.evaluate(CHARTS_JS) or "[]")}
    except RuntimeError:
        return None
    if set(cards) != set(POOLS):
        return None
    events = next(c for c in cards["billing-api"]["charts"] if "events" in c["cls"])
    ok = ("moved" in cards["shop-frontend"]["tiles"]["server_errors"]
          and "moved" in cards["billing-api"]["tiles"]["rejected_requests"] and "503" in events["bars"])
    return ok and cards


def test_live_charts_at_desktop_and_phone_size(page, tmp_path):
    b, url, _ = page
    dt = DevTools(tmp_path)
    try:
        dt.call("Network.enable")
        dt.call("Page.enable")
        cards = load(dt, url, 1280, 900, False, 1)
        # Two or more charts side by side on a desktop.
        assert all(c["box"] < 700 for card in cards for c in card["charts"]), cards
        # The failing requests of the traffic stand out.
        cards = wait_until(lambda: highlighted(dt), 90, 0.25, what="the 5xx and 503 counters highlighted")
        assert "moved" not in cards["billing-api"]["tiles"]["worker_crashes"], cards["billing-api"]["tiles"]
        desktop = screenshot(dt, tmp_path / "status-desktop.png")

        cards = load(dt, url, 390, 844, True, 2)
        phone = screenshot(dt, tmp_path / "status-phone.png")
        # One chart per row, as wide as the screen allows; nothing wider than the screen.
        assert all(300 < c["box"] <= 390 for card in cards for c in card["charts"]), cards
        # (Between two documents of the self-reloading page an evaluation may fail: again.)
        overflow = wait_until(lambda: [dt.evaluate("document.documentElement.scrollWidth - window.innerWidth")],
                              30, 0.25, what="the page's width")[0]
        assert overflow <= 0, f"the page is {overflow}px wider than a phone's screen"
        assert desktop == (1280, 900) and phone == (780, 1688)

        urls = dt.requested_urls()
        assert urls, "no request seen"
        for u in urls:
            parsed = urllib.parse.urlsplit(u)
            assert parsed.scheme in ("data", "about") or parsed.hostname in ("127.0.0.1", "localhost"), u
    finally:
        dt.close()
    b.assert_running()
