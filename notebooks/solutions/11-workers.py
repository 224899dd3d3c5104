# Exercise 11-workers: measure the proxy with --workers 1 and --workers 2, plot, explain.
import http.server
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import matplotlib.pyplot as plt


class Cacheable(http.server.BaseHTTPRequestHandler):
    """An origin whose page the proxy may cache for 10 minutes."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Cache-Control", "max-age=600")
        self.send_header("Content-Length", "6")
        self.end_headers()
        self.wfile.write(b"hello\n")

    def log_message(self, *args):
        pass


def start_proxy(workers, folder):
    """Start `python -m proxy --workers N` on a free port; return (process, port)."""
    with socket.socket() as probe:  # --workers needs a fixed port: find one that is free
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    blacklist = os.path.join(folder, "blacklist.txt")
    open(blacklist, "w").close()
    command = [sys.executable, "-m", "proxy", "--port", str(port), "--workers", str(workers)]
    command += ["--blacklist", blacklist, "--access-log", "none", "--log-level", "WARNING"]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    for _ in range(workers):  # each worker says "listening" once it is ready
        line = proc.stderr.readline()
        assert "listening" in line, line
    return proc, port  # stop it with proc.terminate(); proc.wait(); proc.stderr.close()


def round_trips(port, url, clients=8, seconds=0.5):
    request = f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    counts = [0] * clients
    ready = threading.Barrier(clients + 1)

    def client(i):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            ready.wait()
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                sock.sendall(request)
                data = b""
                while not data.endswith(b"hello\n"):
                    data += sock.recv(65536)
                counts[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    ready.wait(timeout=10)
    for t in threads:
        t.join(timeout=10)
    return sum(counts) / seconds


origin = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Cacheable)
threading.Thread(target=origin.serve_forever, daemon=True).start()
url = f"http://127.0.0.1:{origin.server_address[1]}/page"
samples = {}
with tempfile.TemporaryDirectory() as folder:
    for workers in (1, 2):
        proc, port = start_proxy(workers, folder)
        try:
            round_trips(port, url, seconds=0.2)  # warm up: every worker caches the page
            samples[workers] = [round_trips(port, url) for _ in range(3)]
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            proc.stderr.close()
origin.shutdown()
origin.server_close()
speedup = statistics.median(samples[2]) / statistics.median(samples[1])

fig, ax = plt.subplots(figsize=(6, 2.8))
for workers, rates in samples.items():
    ax.scatter([workers] * len(rates), rates, color="C0")
ax.plot([1, 2], [statistics.median(samples[1]), statistics.median(samples[2])], color="C0")
ax.set(xticks=[1, 2], xlabel="--workers", ylabel="requests/s (cache hits)", ylim=(0, None))
ax.set_title(f"8 keep-alive clients, {os.cpu_count()} cores: speed-up {speedup:.2f}")
fig.tight_layout()

cores = os.cpu_count()
if speedup > 1.15:
    effect = f"served {speedup:.2f} times as many requests per second as with one"
else:
    effect = f"changed little ({speedup:.2f} times the rate of one worker)"
explanation = (
    f"With --workers 2 the proxy {effect}. Each worker is a separate process with its own "
    "single-threaded reactor, and the kernel spreads the connections over them (SO_REUSEPORT), "
    f"so two workers can keep two of this machine's {cores} cores busy where one worker can "
    "use one core at most. The gain stays below 2 because those cores are shared: the load "
    "generator in this notebook (one process, one GIL), the origin and whatever else runs on "
    "the machine need them too, and the kernel may hand most connections to one worker."
)
