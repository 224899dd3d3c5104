"""Processes of the performance benchmark: the origin and the proxies, each stopped by its PID.

Theory of operation
-------------------
Every server the benchmark needs is a child process on 127.0.0.1 with a port picked by binding
port 0. Its output goes to a log file in the run's temporary directory, never to a pipe (a full
pipe would stall a busy server and skew the figures). A :class:`Stack` records each child as it
starts and stops them in reverse order by PID, in a ``finally`` that also runs on Ctrl-C: no
process is ever looked up by name.

The origin is nginx from Debian's packages when it is installed (it is written in C and serves
with ``sendfile``, so it is not the bottleneck), else :mod:`perf_origin`, a small asyncio server
of our own. Both serve the same files over HTTP and over TLS with certificates from trustme.

Servers started as root drop privileges (squid, tinyproxy insist), so their directories are
made world-writable in that case. ``RLIMIT_NOFILE`` is raised to the hard limit here and passed
to every child through ``preexec_fn``, because thousands of idle tunnels need as many sockets.
"""

from __future__ import annotations

import os
import pwd
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent

FILES = {"small.bin": 100, "mid.bin": 64 * 1024, "big.bin": 256 << 20, "huge.bin": 1 << 30}
"""Served files and their sizes; the big ones are sparse, so they cost no disk."""


def raise_nofile() -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to the hard limit; return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _child_limits() -> None:
    # Runs in the child between fork and exec (``ulimit -n`` handed down explicitly).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without ``*_proxy`` variables, so clients go exactly where told."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(extra)
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int:
    """Resident memory of *pid* and all its descendants in KiB (``VmRSS``), 0 if gone."""
    total = 0
    for p in [pid, *_descendants(pid)]:
        try:
            with open(f"/proc/{p}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds used so far by *pid* and all its descendants."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for p in [pid, *_descendants(pid)]:
        try:
            with open(f"/proc/{p}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except (OSError, ValueError, IndexError):
            pass
    return total


def open_fds(pid: int) -> int:
    """Descriptors open in *pid* and all its descendants (0 for what cannot be read)."""
    total = 0
    for p in [pid, *_descendants(pid)]:
        try:
            total += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            pass
    return total


def fd_limit(pid: int) -> int | None:
    """The soft ``RLIMIT_NOFILE`` of *pid* (from ``/proc/PID/limits``), None if unreadable."""
    try:
        with open(f"/proc/{pid}/limits") as handle:
            for line in handle:
                if line.startswith("Max open files"):
                    return int(line.split()[3])
    except (OSError, ValueError, IndexError):
        pass
    return None


def start_holder(stack: Stack, tmp: Path) -> int:
    """Start :mod:`perf_hold`'s origin, which holds idle connections; return its port."""
    port = free_port()
    argv = [sys.executable, str(HERE / "perf_hold.py"), "origin", "--port", str(port)]
    stack.spawn("holder", argv, port, tmp / "holder.log")
    return port


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as handle:
                kids = [int(x) for x in handle.read().split()]
        except OSError:
            continue
        for kid in kids:
            found += [kid, *_descendants(kid)]
    return found


@dataclass
class Proc:
    """One started server: its name, port, log file and process."""

    name: str
    port: int
    popen: subprocess.Popen[bytes]
    log: Path
    stop_signal: int = signal.SIGTERM
    access_log: Path | None = None
    """Where its access log goes (its ``log`` for those that log to stderr), if it has one."""

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.popen.pid

    def stop(self, timeout: float = 10.0) -> None:
        """Send the stop signal to our child by PID, wait, and kill it if it lingers."""
        if self.popen.poll() is not None:
            return
        try:
            os.kill(self.popen.pid, self.stop_signal)
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout)
        except ProcessLookupError:
            pass

    def access_log_lines(self) -> int | None:
        """Lines in its access log so far (None when it has none or it is unreadable)."""
        if self.access_log is None:
            return None
        try:
            with open(self.access_log, "rb") as handle:
                return sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))
        except OSError:
            return None

    def log_tail(self, lines: int = 5) -> str:
        """Last lines of the child's log, for an error message."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Stack:
    """Children started by this run, stopped in reverse order (use as a context manager)."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []

    def spawn(
        self,
        name: str,
        argv: list[str],
        port: int,
        log: Path,
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> Proc:
        """Start *argv*, record it, and return it once *port* accepts connections."""
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                env=env or clean_env(),
                preexec_fn=_child_limits,
                start_new_session=True,  # Ctrl-C reaches us only; we stop the children.
            )
        proc = Proc(name, port, popen, log, stop_signal)
        self.procs.append(proc)
        if not wait_port(port, popen, timeout=30.0):
            proc.stop()
            raise RuntimeError(f"{name} did not start listening on {port}: {proc.log_tail()}")
        return proc

    def stop_all(self) -> None:
        """Stop every child, newest first."""
        while self.procs:
            self.procs.pop().stop()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def wait_port(port: int, popen: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    """Poll until 127.0.0.1:*port* accepts a connection, the child dies, or *timeout* passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen is not None and popen.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


# -- the origin ---------------------------------------------------------------------------------


def make_site(root: Path) -> Path:
    """Create the served files under *root*/www (sparse for the big ones); return the folder."""
    www = root / "www"
    www.mkdir(exist_ok=True)
    for name, size in FILES.items():
        with open(www / name, "wb") as handle:
            if size <= 1 << 20:
                handle.write(b"x" * size)
            else:
                handle.truncate(size)
    return www


def make_certs(root: Path) -> tuple[Path, Path, Path]:
    """A trustme CA and a server certificate for 127.0.0.1; return (ca, cert, key) paths."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = (root / "ca.pem", root / "cert.pem", root / "key.pem")
    ca.cert_pem.write_to_path(str(paths[0]))
    cert.cert_chain_pems[0].write_to_path(str(paths[1]))
    cert.private_key_pem.write_to_path(str(paths[2]))
    return paths


@dataclass
class Origin:
    """Where the origin listens and what it is."""

    kind: str
    http_port: int
    tls_port: int
    ca: Path
    hold_port: int | None = None
    """The idle-connection holder of the tunnel scenario, once started."""

    def url(self, name: str, tls: bool = False) -> str:
        """Absolute URL of a served file."""
        if tls:
            return f"https://127.0.0.1:{self.tls_port}/{name}"
        return f"http://127.0.0.1:{self.http_port}/{name}"


NGINX_CONF = """\
{user}worker_processes 2;
worker_rlimit_nofile {nofile};
error_log {tmp}/error.log crit;
pid {tmp}/nginx.pid;
events {{ worker_connections {conns}; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
    default_type application/octet-stream;
    sendfile on; tcp_nopush on;
    keepalive_requests 10000000; keepalive_timeout 300s;
    expires 1h;
    server {{ listen 127.0.0.1:{http}; root {www}; }}
    server {{
        listen 127.0.0.1:{tls} ssl; root {www};
        ssl_certificate {cert}; ssl_certificate_key {key};
    }}
}}
"""


def start_origin(stack: Stack, tmp: Path, *, force_own: bool = False) -> Origin:
    """Start nginx (or our asyncio origin) serving :data:`FILES` over HTTP and TLS."""
    www = make_site(tmp)
    ca, cert, key = make_certs(tmp)
    http, tls = free_port(), free_port()
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if nginx and not force_own:
        ngx = tmp / "nginx"
        ngx.mkdir()
        user = ""
        if os.geteuid() == 0:  # workers would switch to nobody and not reach the 0700 tmp dir
            user = f"user {pwd.getpwuid(os.getuid()).pw_name};\n"
        conf = NGINX_CONF.format(
            user=user,
            nofile=nofile,
            conns=max(1024, nofile // 2 - 100),
            tmp=ngx,
            www=www,
            http=http,
            tls=tls,
            cert=cert,
            key=key,
        )
        (ngx / "nginx.conf").write_text(conf)
        argv = [nginx, "-p", str(ngx), "-c", str(ngx / "nginx.conf"), "-g", "daemon off;"]
        stack.spawn("nginx", argv, http, ngx / "out.log", stop_signal=signal.SIGQUIT)
        wait_port(tls, None, 10.0)
        return Origin("nginx", http, tls, ca)
    argv = [
        sys.executable,
        str(HERE / "perf_origin.py"),
        "--root",
        str(www),
        "--port",
        str(http),
        "--tls-port",
        str(tls),
        "--cert",
        str(cert),
        "--key",
        str(key),
    ]
    stack.spawn("origin", argv, http, tmp / "origin.log")
    wait_port(tls, None, 10.0)
    return Origin("asyncio", http, tls, ca)
