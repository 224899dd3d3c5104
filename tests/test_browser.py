"""End-to-end tests with a real headless Chromium (Debian's ``chromium`` package) as the client.

Theory of operation
-------------------
Each test starts the proxy and, when it needs one, a small loopback origin, then runs the
``chromium`` command line once per page load: ``--dump-dom`` prints the DOM after scripts ran
(``--virtual-time-budget`` lets timers and fetches finish first), ``--screenshot`` writes a PNG.
Every run gets a fresh profile directory, so a second run starts with an empty browser cache
and whatever it does not fetch from the origin came from the proxy's cache.

``--proxy-bypass-list=<-loopback>`` removes Chromium's built-in loopback bypass, so even
``http://127.0.0.1:...`` goes through the proxy. Names such as ``origin.test`` are never
resolved by the browser (it hands them to the proxy, whose StaticResolver knows them). Chromium
also makes a few background requests of its own (updates, sign-in); they reach the proxy, fail
to resolve (a 502; nothing leaves the machine) and are ignored by filtering records by URL.

Each browser runs in its own process group with a timeout; on timeout that group, and only
it, is killed.
"""

from __future__ import annotations

import http.server
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import require_program
from support import OriginServer, RunningProxy, read_response

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
BROWSER_TIMEOUT = 60.0
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-features=NetworkTimeServiceQuerying,OptimizationHints,MediaRouter,Translate",
    "--password-store=basic",
    "--virtual-time-budget=5000",
]


# -- running the browser ----------------------------------------------------------------------


def run_chromium(
    profile_root: Path, proxy: RunningProxy, args: list[str], timeout: float = BROWSER_TIMEOUT
) -> str:
    """Run one headless Chromium through *proxy* with a fresh profile; return its stdout."""
    binary = require_program("chromium")
    profile_root.mkdir(parents=True, exist_ok=True)
    profile = profile_root / f"profile-{time.monotonic_ns()}"
    command = [
        binary,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        f"--proxy-server=127.0.0.1:{proxy.port}",
        "--proxy-bypass-list=<-loopback>",
        *args,
    ]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: renderers die with it on timeout
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium did not finish within {timeout} s: {args}")
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {err.decode()[-3000:]}"
    return out.decode("utf-8", "replace")


def dump_dom(tmp_path: Path, proxy: RunningProxy, url: str, *extra: str) -> str:
    """The DOM of *url* after its scripts ran, loaded through *proxy*."""
    return run_chromium(tmp_path / "chromium", proxy, [*extra, "--dump-dom", url])


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    """Poll *predicate* until it holds or *timeout* passes (log lines land asynchronously)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def records(proxy: RunningProxy, url_part: str) -> list[tuple[str, int, str]]:
    """``(url, status, result)`` of the finished requests whose URL contains *url_part*."""
    recent = proxy.call(lambda: list(proxy.server.stats.recent))
    return [(r.url, r.status, r.result) for r in recent if url_part in r.url]  # type: ignore[union-attr]


# -- a tiny page with every kind of subresource ---------------------------------------------------


def make_png(width: int, height: int) -> bytes:
    """A valid RGB PNG of *width* x *height* pixels (solid teal), built by hand."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + b"\x00\x80\x80" * width  # filter byte 0, then RGB triples
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (asserting the signature)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>browser test page</title>
<link rel="stylesheet" href="/style.css"></head>
<body><h1 id="probe">through the proxy</h1>
<img id="pic" src="/pixel.png" alt="pixel">
<p id="out">script did not run</p>
<script src="/app.js"></script>
</body></html>
"""
CSS = b"#probe { color: rgb(1, 2, 3); }\n"
SCRIPT = b"""window.addEventListener("load", function () {
  var pic = document.getElementById("pic");
  var color = getComputedStyle(document.getElementById("probe")).color;
  document.getElementById("out").textContent =
    "img=" + pic.naturalWidth + "x" + pic.naturalHeight + " color=" + color;
});
"""
PNG_WIDTH, PNG_HEIGHT = 7, 5
RESOURCES = {
    "/page.html": ("text/html; charset=utf-8", PAGE),
    "/style.css": ("text/css", CSS),
    "/app.js": ("application/javascript", SCRIPT),
    "/pixel.png": ("image/png", make_png(PNG_WIDTH, PNG_HEIGHT)),
}
EXPECTED_TEXT = f"img={PNG_WIDTH}x{PNG_HEIGHT} color=rgb(1, 2, 3)"


class PageHandler(http.server.BaseHTTPRequestHandler):
    """Serves :data:`RESOURCES`, cacheable for five minutes, counting requests per path."""

    protocol_version = "HTTP/1.1"
    server: PageOrigin

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        with self.server.lock:
            self.server.hits[path] = self.server.hits.get(path, 0) + 1
        found = RESOURCES.get(path)
        if found is None:
            body, content_type, cache = b"not here\n", "text/plain", "no-store"
            self.send_response(404)
        else:
            (content_type, body), cache = found, "max-age=300"
            self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.end_headers()
        self.wfile.write(body)


class PageOrigin(http.server.ThreadingHTTPServer):
    """A loopback origin for :class:`PageHandler`."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), PageHandler)
        self.lock = threading.Lock()
        self.hits: dict[str, int] = {}

    def counts(self) -> dict[str, int]:
        with self.lock:
            return {path: self.hits.get(path, 0) for path in RESOURCES}


@pytest.fixture
def page_origin() -> Iterator[PageOrigin]:
    server = PageOrigin()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


# -- the tests -----------------------------------------------------------------------------------


def proxy_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Messages the proxy logged at ERROR or above (an internal error is always a bug)."""
    return [
        r.getMessage() for r in caplog.records if r.levelno >= 40 and r.name.startswith("proxy")
    ]


def load_page_twice(
    tmp_path: Path, proxy: RunningProxy, page_origin: PageOrigin, caplog: pytest.LogCaptureFixture
) -> tuple[str, list[str]]:
    """Load the page in two browser processes; return the URL and the second load's errors."""
    port = page_origin.server_address[1]
    url = f"http://origin.test:{port}/page.html"
    dom = dump_dom(tmp_path, proxy, url)
    assert EXPECTED_TEXT in dom, dom  # the script ran, saw the image's size and the CSS colour
    assert page_origin.counts() == {path: 1 for path in RESOURCES}, page_origin.counts()
    assert proxy_errors(caplog) == []
    caplog.clear()
    # A new browser process with a new profile: its own cache is empty, the proxy's is not.
    dom = dump_dom(tmp_path, proxy, url)
    assert EXPECTED_TEXT in dom, dom
    return url, proxy_errors(caplog)


def test_page_with_subresources_loads_and_is_then_served_from_the_cache(
    tmp_path: Path, proxy: RunningProxy, page_origin: PageOrigin, caplog: pytest.LogCaptureFixture
) -> None:
    url, _ = load_page_twice(tmp_path, proxy, page_origin, caplog)
    # Not one more request for any resource reached the origin on the second load.
    assert page_origin.counts() == {path: 1 for path in RESOURCES}, page_origin.counts()
    base = url.rsplit("/", 1)[0]
    resource_urls = sorted(base + path for path in RESOURCES)

    def results(result: str) -> list[str]:
        return sorted(u for u, s, r in records(proxy, base) if r == result and s == 200)

    assert wait_for(lambda: results("TCP_HIT") == resource_urls), records(proxy, base)
    assert results("TCP_MISS") == resource_urls, records(proxy, base)
    assert proxy.call(lambda: proxy.server.stats.requests_total) >= 2 * len(RESOURCES)  # type: ignore[operator]
    assert proxy.call(lambda: proxy.server.stats.results["TCP_HIT"]) >= len(RESOURCES)  # type: ignore[operator]


def test_browser_reusing_connections_after_cache_hits_causes_no_internal_error(
    tmp_path: Path, proxy: RunningProxy, page_origin: PageOrigin, caplog: pytest.LogCaptureFixture
) -> None:
    _, errors = load_page_twice(tmp_path, proxy, page_origin, caplog)
    assert errors == []


def test_request_after_a_cache_hit_on_the_same_connection(
    proxy: RunningProxy, origin: OriginServer
) -> None:
    # The same bug without a browser, on one raw keep-alive connection: miss, hit, then any.
    cacheable = origin.url("/cacheable?cc=max-age=60", host="origin.test")
    statuses = []
    with proxy.connect() as sock:
        for url in (cacheable, cacheable, origin.url("/hello", host="origin.test")):
            sock.sendall(f"GET {url} HTTP/1.1\r\nHost: origin.test\r\n\r\n".encode())
            try:
                status, _, body = read_response(sock)
            except OSError as exc:  # the proxy resets the connection
                status, body = 0, repr(exc).encode()
            statuses.append((status, body))
    assert [s for s, _ in statuses] == [200, 200, 200], statuses
    assert statuses[2][1] == b"hello from the origin\n"


SECURE_PAGE = b"""<!doctype html><html><head><title>tls</title></head><body>
<p id="out">static</p>
<script>document.getElementById("out").textContent = "secure:" + location.protocol;</script>
</body></html>
"""


def test_https_page_loads_through_a_connect_tunnel(
    tmp_path: Path, proxy: RunningProxy, tls_origin: OriginServer, caplog: pytest.LogCaptureFixture
) -> None:
    def secure(h) -> None:  # noqa: ANN001 - support.OriginHandler
        h.reply(200, SECURE_PAGE, content_type="text/html; charset=utf-8")

    tls_origin.routes["/secure"] = secure
    where = f"origin.test:{tls_origin.port}"
    # The test CA is not in Chromium's trust store; this flag is for this test only.
    dom = dump_dom(tmp_path, proxy, f"https://{where}/secure", "--ignore-certificate-errors")
    assert "secure:https:" in dom, dom
    assert tls_origin.hits["/secure"] == 1
    # A tunnel is logged when it closes, which happens after the browser exits.
    assert wait_for(lambda: (where, 200, "TCP_TUNNEL") in records(proxy, where)), records(
        proxy, where
    )
    assert proxy.call(lambda: proxy.server.stats.results["TCP_TUNNEL"]) >= 1  # type: ignore[operator]
    assert proxy_errors(caplog) == []


def test_blocked_site_shows_the_proxys_403_page(
    tmp_path: Path,
    make_proxy: Callable[..., RunningProxy],
    origin: OriginServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The fixture's proxy reads this file once at start (watch_blacklist=False): write it first.
    (tmp_path / "blacklist.txt").write_text("origin.test\n")
    proxy = make_proxy()
    url = f"http://origin.test:{origin.port}/hello"

    dom = dump_dom(tmp_path, proxy, url)
    assert "403" in dom and "blocked by rule" in dom, dom
    assert "origin.test" in dom, dom
    assert origin.hits["/hello"] == 0
    assert "origin.test" not in proxy.call(lambda: list(proxy.resolver.lookups))  # type: ignore[operator]
    assert wait_for(lambda: (url, 403, "TCP_DENIED") in records(proxy, "origin.test"))
    assert proxy_errors(caplog) == []


def _traffic(proxy: RunningProxy, origin: OriginServer, count: int) -> None:
    """*count* requests for one cacheable URL through *proxy* (one miss, then hits)."""
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy.url}))
    for _ in range(count):
        with opener.open(origin.url("/cacheable?cc=max-age=60", host="origin.test"), timeout=10):
            pass


def _card(dom: str, ident: str) -> str:
    match = re.search(rf'<b id="{ident}">([^<]*)</b>', dom)
    assert match, f"no card {ident!r} in {dom[:2000]}"
    return match.group(1)


def _recent_rows(dom: str) -> list[list[str]]:
    """Cells of the rendered "recent requests" table, one list per data row."""
    table = re.search(r'<table id="recent">(.*?)</table>', dom, re.S)
    assert table, dom[:2000]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table.group(1), re.S)
    return [re.findall(r"<td>(.*?)</td>", row, re.S) for row in rows if "<td>" in row]


def test_dashboard_renders_live_counters_and_screenshots(
    tmp_path: Path, proxy: RunningProxy, origin: OriginServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = origin.url("/cacheable?cc=max-age=60", host="origin.test")
    shown = url.partition("?")[0]  # the dashboard never shows query strings

    def ours(dom: str) -> list[str]:
        """Result codes of the rows for our URL (time, client, method, URL, ..., result)."""
        return sorted(
            cells[7] for cells in _recent_rows(dom) if len(cells) == 8 and cells[3] == shown
        )

    _traffic(proxy, origin, 3)
    assert proxy.call(lambda: proxy.server.stats.requests_total) == 3

    # proxy.local in absolute form: a page the proxy serves itself; its script fetches
    # /stats.json (same origin, so through the proxy again) and fills the cards in.
    dom = dump_dom(tmp_path, proxy, "http://proxy.local/")
    assert "<title>minireactor proxy</title>" in dom
    total = _card(dom, "total")
    assert total.isdigit() and int(total) >= 3, total
    assert _card(dom, "hit").endswith(" %") and float(_card(dom, "hit")[:-2]) > 0, dom
    assert _card(dom, "centries").startswith("1 entries, "), _card(dom, "centries")
    assert ours(dom) == ["TCP_HIT", "TCP_HIT", "TCP_MISS"], _recent_rows(dom)
    assert re.search(r'id="statuses">.*?<td>200</td><td>\d+</td>', dom, re.S), dom

    _traffic(proxy, origin, 2)
    # The proxy's own address: with <-loopback> this too goes through the proxy, as local.
    dom = dump_dom(tmp_path, proxy, f"http://127.0.0.1:{proxy.port}/")
    assert int(_card(dom, "total")) >= int(total) + 2, (total, _card(dom, "total"))
    assert ours(dom) == ["TCP_HIT"] * 4 + ["TCP_MISS"], _recent_rows(dom)

    shot = tmp_path / "dashboard.png"
    run_chromium(
        tmp_path / "chromium",
        proxy,
        [f"--screenshot={shot}", "--window-size=1200,900", f"http://127.0.0.1:{proxy.port}/"],
    )
    data = shot.read_bytes()
    assert len(data) > 10 * 1024, len(data)
    width, height = png_size(data)
    assert (width, height) == (1200, 900), (width, height)
    assert proxy_errors(caplog) == []


def test_screenshot_tool_writes_a_dashboard_png(tmp_path: Path) -> None:
    require_program("chromium")
    out = tmp_path / "shot.png"
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "dashboard_screenshot.py"), str(out)],
        capture_output=True,
        timeout=120,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    data = out.read_bytes()
    assert len(data) > 10 * 1024
    assert png_size(data) == (1200, 900)


def test_png_helper_round_trips() -> None:
    # The hand-built PNG must be valid for test 1 to mean anything: decode it back.
    data = make_png(3, 2)
    assert png_size(data) == (3, 2)
    idat = data[8 + 25 + 8 : -(4 + 12)]  # after signature, IHDR, IDAT head; before CRC, IEND
    assert zlib.decompress(idat) == (b"\x00" + b"\x00\x80\x80" * 3) * 2
