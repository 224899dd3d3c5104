"""Take a PNG screenshot of the proxy's dashboard after some realistic traffic.

Usage::

    python tools/dashboard_screenshot.py OUT.png [--width 1200] [--height 900]
                                         [--chromium PATH] [--timeout 60]

Theory of operation
-------------------
Everything runs on loopback and stops before the script exits: a small origin (a page, its CSS,
an image, a slow-changing JSON document, a missing page) on 127.0.0.1 port 0, and a real
:class:`proxy.app.ProxyServer` on port 0 whose resolver is a :class:`minireactor.StaticResolver`
table (``origin.test`` and ``ads.origin.test`` are 127.0.0.1; nothing is ever looked up in DNS)
and whose blocklist holds one rule, ``ads.origin.test``. The script sends a fixed mix of
requests through the proxy (misses, cache hits, a 403, a 404, a POST), so every part of the
dashboard has something to show, then runs headless Chromium (Debian's ``chromium``) once with
``--screenshot`` on the dashboard.

The browser talks to the proxy directly (``http://127.0.0.1:PORT/`` is a page the proxy serves
itself) with no proxy configured, and ``--host-resolver-rules`` makes every host name fail inside
the browser: Chromium's own background requests (updates, sign-in) can neither reach the network
nor clutter the "recent requests" table. The screenshot is byte-for-byte different on every run
(times, ports), but its layout is stable, which is what documentation needs.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from minireactor import Reactor, StaticResolver
from proxy.app import ProxyServer
from proxy.config import Config

HOSTS = {"origin.test": "127.0.0.1", "ads.origin.test": "127.0.0.1"}
BLOCKLIST = "# written by tools/dashboard_screenshot.py\nads.origin.test\n"
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
    "--hide-scrollbars",
    "--password-store=basic",
    # Host names fail inside the browser; the dashboard is on an IP literal.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--virtual-time-budget=5000",
]
RESOURCES = {
    "/": ("text/html", b"<!doctype html><title>demo</title><link rel=stylesheet href=/s.css>\n"),
    "/s.css": ("text/css", b"body { color: #334; }\n"),
    "/logo.png": ("image/png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 2000),
    "/news.json": ("application/json", b'{"headline": "proxy caches it"}\n'),
}


class _Origin(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)
        found = RESOURCES.get(self.path.split("?", 1)[0])
        if self.command == "POST":
            found = ("text/plain", b"thanks for %d bytes\n" % length)
        status, (ctype, body) = (200, found) if found else (404, ("text/plain", b"no such page\n"))
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=300" if found else "no-store")
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer


def make_traffic(proxy_port: int, origin_port: int) -> None:
    """Send the demo mix of requests through the proxy and read every answer."""
    plan = [("GET", "origin.test", path) for path in RESOURCES] * 3  # one miss each, then hits
    plan += [("GET", "origin.test", "/missing"), ("POST", "origin.test", "/form")]
    plan += [("GET", "ads.origin.test", "/banner.js")]  # 403: blocked by the rule
    for method, host, path in plan:
        # One connection per request, closed by the proxy: a cache hit leaves the connection in
        # a state where the next request, or the client's own close, trips a known proxy bug
        # (CacheStep.serve, see tests/test_browser.py).
        conn = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=10)
        try:
            body = b"name=value" if method == "POST" else None
            url = f"http://{host}:{origin_port}{path}"
            conn.request(method, url, body=body, headers={"Connection": "close"})
            conn.getresponse().read()
        finally:
            conn.close()


def screenshot(chromium: str, url: str, out: Path, size: tuple[int, int], timeout: float) -> None:
    """Run one headless Chromium writing a screenshot of *url* to *out*."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={size[0]},{size[1]}",
            f"--screenshot={out}",
            url,
        ]
        proc = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the group we started, renderers included
            proc.communicate()
            raise SystemExit(f"chromium did not finish within {timeout} s") from None
        if proc.returncode != 0 or not out.exists():
            tail = err.decode("utf-8", "replace")[-2000:]
            raise SystemExit(f"chromium failed ({proc.returncode}):\n{tail}")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run origin + proxy + traffic + browser, clean everything up."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="where to write the PNG")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds for the browser")
    args = parser.parse_args(argv)
    if shutil.which(args.chromium) is None:
        parser.error(f"no Chromium at {args.chromium!r} (apt-get install chromium)")

    origin = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Origin)
    origin.daemon_threads = True
    origin_thread = threading.Thread(target=origin.serve_forever, daemon=True)
    origin_thread.start()
    reactor = Reactor()
    with tempfile.TemporaryDirectory(prefix="dashboard-shot-") as work:
        blacklist = Path(work) / "blacklist.txt"
        blacklist.write_text(BLOCKLIST)
        config = Config(port=0, blacklist=str(blacklist), watch_blacklist=False)
        server = ProxyServer(config, reactor=reactor, resolver=StaticResolver(reactor, HOSTS))
        try:
            server.start_in_thread()
            proxy_port = server.address[1]
            make_traffic(proxy_port, origin.server_address[1])
            out = args.out.resolve()
            out.parent.mkdir(parents=True, exist_ok=True)
            url = f"http://127.0.0.1:{proxy_port}/"
            screenshot(args.chromium, url, out, (args.width, args.height), args.timeout)
        finally:
            server.stop_from_thread()
            reactor.close()
            origin.shutdown()
            origin.server_close()
            origin_thread.join(10)
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
