"""The proxies under test: ours (without and with its cache), squid (likewise), tinyproxy, proxy.py.

Theory of operation
-------------------
Each proxy gets its own port and a configuration written into the run's temporary directory,
tuned for a fair comparison on loopback: no access logs, no disk cache, the origin's ports
allowed for ``CONNECT``, connection caps above the benchmark's concurrency. A proxy whose
program is missing is not an error: :func:`start_proxy` returns the reason it was skipped,
and the table shows it.

proxy.py from PyPI installs a package named ``proxy``, the same as ours, so it cannot share our
environment. It is found through its distribution metadata, or in a folder given by
``--proxypy-path`` (``pip install --target DIR proxy.py``), and run with ``PYTHONPATH=DIR``
from a directory where our package does not shadow it.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from perf_procs import REPO, Origin, Proc, Stack, clean_env, free_port

PROXIES = (
    "ours",
    "baseline",
    "ours-nosplice",
    "ours-cache",
    "ours-2w",
    "squid",
    "squid-cache",
    "tinyproxy",
    "proxypy",
    "floor",
)
"""Names accepted by ``--proxies``, in the order they appear in the table."""


def _shared_dir(tmp: Path, name: str) -> Path:
    # squid and tinyproxy drop root privileges: their files must be writable by that user.
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=tmp))
    if os.geteuid() == 0:
        os.chmod(tmp, 0o755)
        os.chmod(path, 0o777)
    return path


def start_ours(
    stack: Stack,
    tmp: Path,
    origin: Origin,
    *,
    cache: bool,
    argv_prefix: list[str] | None = None,
    workers: int = 1,
    splice: bool = True,
    repo: Path = REPO,
    name: str | None = None,
) -> Proc:
    """``python -m proxy`` on a free port with an empty blocklist (and *workers* processes).

    *repo* is the checkout whose ``proxy`` package runs (``-m`` puts the working folder first on
    the import path), so an earlier commit can run beside this one under *name*.
    """
    port = free_port()
    empty = tmp / "empty-blacklist.txt"
    empty.touch()
    argv = [
        *(argv_prefix or [sys.executable, "-m"]),
        "proxy",
        "--port",
        str(port),
        "--blacklist",
        str(empty),
        "--log-level",
        "WARNING",
        "--max-conns",
        "100000",
        "--connect-ports",
        ",".join(str(p) for p in (443, origin.tls_port, origin.http_port, origin.hold_port) if p),
    ]
    if not cache:
        argv.append("--no-cache")
    label = "ours-cache" if cache else "ours"
    if not splice:
        argv.append("--no-splice")
        label = "ours-nosplice"
    if workers > 1:
        argv += ["--workers", str(workers)]
        label = f"ours-{workers}w"
    label = name or label
    return stack.spawn(label, argv, port, tmp / f"{label}.log", cwd=repo, stop_signal=signal.SIGINT)


SQUID_CONF = """\
http_port 127.0.0.1:{port}
http_access allow all
{cache}
access_log none
cache_store_log none
cache_log {dir}/cache.log
pid_filename {dir}/squid.pid
coredump_dir {dir}
netdb_filename none
visible_hostname bench
max_filedescriptors {nofile}
shutdown_lifetime 1 seconds
forwarded_for delete
{user}
"""


# Without a cache; with its memory cache only (no disk store), sized like ours by default.
SQUID_NO_CACHE = "cache deny all\ncache_mem 8 MB"
SQUID_MEMORY_CACHE = "cache_mem 64 MB\nmaximum_object_size_in_memory 1 MB"


def start_squid(stack: Stack, tmp: Path, nofile: int, *, cache: bool = False) -> Proc | str:
    """Squid in the foreground (``-N``): no cache (``cache deny all``), or its memory cache."""
    squid = shutil.which("squid") or shutil.which("squid", path="/usr/sbin")
    if not squid:
        return "skipped (squid not installed)"
    name = "squid-cache" if cache else "squid"
    folder = _shared_dir(tmp, name)
    port = free_port()
    user = "cache_effective_user proxy" if os.geteuid() == 0 else ""
    conf = folder / "squid.conf"
    conf.write_text(
        SQUID_CONF.format(
            port=port,
            dir=folder,
            nofile=nofile,
            user=user,
            cache=SQUID_MEMORY_CACHE if cache else SQUID_NO_CACHE,
        )
    )
    argv = [squid, "-N", "-f", str(conf)]
    return stack.spawn(name, argv, port, folder / "out.log", stop_signal=signal.SIGINT)


TINYPROXY_CONF = """\
Port {port}
Listen 127.0.0.1
Timeout 600
MaxClients {clients}
LogLevel Critical
LogFile "{dir}/tinyproxy.log"
PidFile "{dir}/tinyproxy.pid"
Allow 127.0.0.1
DisableViaHeader Yes
{user}
"""


def start_tinyproxy(stack: Stack, tmp: Path, clients: int) -> Proc | str:
    """tinyproxy in the foreground (``-d``), no ``ConnectPort`` line so any port may tunnel."""
    tiny = shutil.which("tinyproxy")
    if not tiny:
        return "skipped (tinyproxy not installed)"
    folder = _shared_dir(tmp, "tinyproxy")
    port = free_port()
    user = "User nobody\nGroup nogroup" if os.geteuid() == 0 else ""
    conf = folder / "tinyproxy.conf"
    conf.write_text(TINYPROXY_CONF.format(port=port, dir=folder, clients=clients, user=user))
    return stack.spawn("tinyproxy", [tiny, "-d", "-c", str(conf)], port, folder / "out.log")


def proxypy_path(given: str | None) -> str | None:
    """The folder holding PyPI's proxy.py package, or None when it is not installed."""
    candidates = [given] if given else []
    try:
        dist = metadata.distribution("proxy.py")
        candidates.append(str(dist.locate_file("")))
    except metadata.PackageNotFoundError:
        pass
    for folder in candidates:
        if folder and (Path(folder) / "proxy" / "proxy.py").exists():
            return folder
    return None


def start_proxypy(stack: Stack, tmp: Path, given: str | None) -> Proc | str:
    """proxy.py (abhinavsingh/proxy.py) with its defaults, from outside our repository."""
    folder = proxypy_path(given)
    if folder is None:
        return "skipped (proxy.py not importable; pip install --target DIR proxy.py)"
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "proxy",
        "--hostname",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "WARNING",
    ]
    env = clean_env(PYTHONPATH=folder)
    cwd = Path(tempfile.mkdtemp(prefix="proxypy-", dir=tmp))
    return stack.spawn("proxypy", argv, port, cwd / "out.log", cwd=cwd, env=env)


def start_floor(stack: Stack, tmp: Path) -> Proc:
    """``bench/perf_floor.py``: the least Python per request, to measure the interpreter's cost."""
    port = free_port()
    argv = [sys.executable, str(REPO / "bench" / "perf_floor.py"), str(port)]
    return stack.spawn("floor", argv, port, tmp / "floor.log", stop_signal=signal.SIGINT)


def start_proxy(
    name: str,
    stack: Stack,
    tmp: Path,
    origin: Origin,
    *,
    nofile: int,
    tunnels: int,
    proxypy: str | None,
    baseline: str | None = None,
) -> Proc | str:
    """Start the proxy called *name*; return it, or why it was skipped."""
    try:
        if name == "ours":
            return start_ours(stack, tmp, origin, cache=False)
        if name == "baseline":
            if baseline is None or not (Path(baseline) / "proxy" / "__main__.py").is_file():
                return f"skipped (--baseline {baseline} is not a checkout of this project)"
            return start_ours(stack, tmp, origin, cache=False, repo=Path(baseline), name=name)
        if name == "ours-nosplice":
            return start_ours(stack, tmp, origin, cache=False, splice=False)
        if name == "ours-cache":
            return start_ours(stack, tmp, origin, cache=True)
        if name == "ours-2w":
            return start_ours(stack, tmp, origin, cache=False, workers=2)
        if name == "squid":
            return start_squid(stack, tmp, nofile)
        if name == "squid-cache":
            return start_squid(stack, tmp, nofile, cache=True)
        if name == "tinyproxy":
            return start_tinyproxy(stack, tmp, tunnels + 200)
        if name == "floor":
            return start_floor(stack, tmp)
        if name == "proxypy":
            return start_proxypy(stack, tmp, proxypy)
    except (OSError, RuntimeError) as exc:
        return f"skipped ({name} failed to start: {str(exc)[:200]})"
    return f"skipped (unknown proxy {name})"
