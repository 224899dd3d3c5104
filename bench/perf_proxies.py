"""The proxies under test: ours (without and with its cache), squid (likewise), tinyproxy, proxy.py.

Theory of operation
-------------------
Each proxy gets its own port and a configuration written into the run's temporary directory.
By default every proxy runs as it ships, access log included, since that is what a user gets:

* ours: default flags except ``--no-cache`` (for the cache-off rows), the port, the blocklist
  (an empty file) and ``--connect-ports``; its log (access lines at the default ``INFO``) goes
  to stderr, redirected to a file.
* Squid: its stock ``access_log daemon:FILE squid`` (the default, to a file of the run's).
* tinyproxy: its stock ``LogLevel Info`` to a ``LogFile``.
* proxy.py: its default logging (``INFO``, one line per request) to stderr, into a file.

Beyond logging, the peers are set up for a fair comparison on loopback: no disk cache, the
origin's ports allowed for ``CONNECT``, connection caps above the benchmark's concurrency.
``access_logs=False`` (``--access-logs off``) turns every access log off instead; ``ours-nolog``
is ours with its access log off in any run, to price the log in one invocation, and
``ours-logbeside`` ours with its log file in its blocklist's folder, which the blocklist
watcher observes (see :func:`start_ours`). How to turn
ours's log off depends on the checkout: ``--access-log none`` where ``--help`` lists that flag,
``--log-level WARNING`` (the access lines are ``INFO`` records) before it. A proxy whose
program is missing is not an error: :func:`start_proxy` returns the reason it was skipped,
and the table shows it.

proxy.py from PyPI installs a package named ``proxy``, the same as ours, so it cannot share our
environment. It is found through its distribution metadata, or in a folder given by
``--proxypy-path`` (``pip install --target DIR proxy.py``), and run with ``PYTHONPATH=DIR``
from a directory where our package does not shadow it.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from perf_procs import REPO, Origin, Proc, Stack, clean_env, free_port

PROXIES = (
    "ours",
    "ours-nolog",
    "ours-logbeside",
    "baseline",
    "ours-nosplice",
    "ours-cache",
    "ours-cachedir",
    "ours-2w",
    "squid",
    "squid-cache",
    "tinyproxy",
    "proxypy",
    "proxypy-1w",
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


@functools.cache
def quiet_flags(repo: Path) -> tuple[str, ...]:
    """The flags that turn off the access log of the checkout at *repo*, from its ``--help``."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "proxy", "--help"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
        )
        text = done.stdout
    except (OSError, subprocess.TimeoutExpired):
        text = ""
    if re.search(r"--access-log(?![-\w])", text):
        return ("--access-log", "none")
    return ("--log-level", "WARNING")  # the access lines are INFO records of ``proxy.access``


def start_ours(
    stack: Stack,
    tmp: Path,
    origin: Origin,
    *,
    cache: bool,
    access_log: bool = True,
    argv_prefix: list[str] | None = None,
    workers: int = 1,
    splice: bool = True,
    repo: Path = REPO,
    name: str | None = None,
    log_beside_blocklist: bool = False,
    cache_dir: Path | None = None,
) -> Proc:
    """``python -m proxy`` on a free port with an empty blocklist, default flags otherwise.

    Only the port, the blocklist, ``--connect-ports`` and the variant's own flag (``--no-cache``,
    ``--no-splice``, ``--workers``) are given; with *access_log* false the flags of
    :func:`quiet_flags` too. *repo* is the checkout whose ``proxy`` package runs (``-m`` puts
    the working folder first on the import path), so an earlier commit can run beside this one
    under *name*.

    The blocklist has a folder of its own: its watcher observes the folder, so a log written
    beside it wakes the watcher on every line. *log_beside_blocklist* puts the log there all
    the same, as ``python -m proxy 2> proxy.log`` next to the default ``./blacklist.txt`` does.
    """
    label = "ours-cache" if cache else "ours"
    flags = [] if cache else ["--no-cache"]
    if not access_log:
        flags += quiet_flags(repo)
    if not splice:
        flags.append("--no-splice")
        label = "ours-nosplice"
    if workers > 1:
        flags += ["--workers", str(workers)]
        label = f"ours-{workers}w"
    if cache_dir is not None:
        cache_dir.mkdir(exist_ok=True)
        flags += ["--cache-dir", str(cache_dir)]  # the disk tier behind the memory cache
    label = name or label
    port = free_port()
    rules = tmp / f"blocklist-{label}"  # one per instance: no watcher sees another's files
    rules.mkdir(exist_ok=True)
    empty = rules / "blacklist.txt"
    empty.touch()
    argv = [
        *(argv_prefix or [sys.executable, "-m"]),
        "proxy",
        "--port",
        str(port),
        "--blacklist",
        str(empty),
        "--connect-ports",
        ",".join(str(p) for p in (443, origin.tls_port, origin.http_port, origin.hold_port) if p),
        *flags,
    ]
    log = (rules if log_beside_blocklist else tmp) / f"{label}.log"
    proc = stack.spawn(label, argv, port, log, cwd=repo, stop_signal=signal.SIGINT)
    proc.access_log = proc.log if access_log else None
    return proc


SQUID_CONF = """\
http_port 127.0.0.1:{port}
http_access allow all
{cache}
{access_log}
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


def start_squid(
    stack: Stack, tmp: Path, nofile: int, *, cache: bool = False, access_log: bool = True
) -> Proc | str:
    """Squid in the foreground (``-N``): no cache (``cache deny all``), or its memory cache.

    Its access log is the stock one (``daemon:`` module, ``squid`` format) into the run's
    folder, or ``none`` without *access_log*.
    """
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
            access_log=f"access_log daemon:{folder}/access.log squid"
            if access_log
            else "access_log none",
        )
    )
    argv = [squid, "-N", "-f", str(conf)]
    proc = stack.spawn(name, argv, port, folder / "out.log", stop_signal=signal.SIGINT)
    proc.access_log = folder / "access.log" if access_log else None
    return proc


TINYPROXY_CONF = """\
Port {port}
Listen 127.0.0.1
Timeout 600
MaxClients {clients}
LogLevel {level}
LogFile "{dir}/tinyproxy.log"
PidFile "{dir}/tinyproxy.pid"
Allow 127.0.0.1
DisableViaHeader Yes
{user}
"""


def start_tinyproxy(
    stack: Stack, tmp: Path, clients: int, *, access_log: bool = True
) -> Proc | str:
    """tinyproxy in the foreground (``-d``), no ``ConnectPort`` line so any port may tunnel.

    Its stock ``LogLevel Info`` logs each request; ``Critical`` without *access_log*.
    """
    tiny = shutil.which("tinyproxy")
    if not tiny:
        return "skipped (tinyproxy not installed)"
    folder = _shared_dir(tmp, "tinyproxy")
    port = free_port()
    user = "User nobody\nGroup nogroup" if os.geteuid() == 0 else ""
    conf = folder / "tinyproxy.conf"
    level = "Info" if access_log else "Critical"
    conf.write_text(
        TINYPROXY_CONF.format(port=port, dir=folder, clients=clients, user=user, level=level)
    )
    proc = stack.spawn("tinyproxy", [tiny, "-d", "-c", str(conf)], port, folder / "out.log")
    proc.access_log = folder / "tinyproxy.log" if access_log else None
    return proc


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


def start_proxypy(
    stack: Stack, tmp: Path, given: str | None, *, access_log: bool = True, workers: int = 0
) -> Proc | str:
    """proxy.py (abhinavsingh/proxy.py) with its defaults, from outside our repository.

    Its defaults log each request at ``INFO`` to stderr (a file here); without *access_log*,
    ``--log-level WARNING``. *workers* 0 is its default (one per CPU); 1 gives one worker and one
    acceptor, a single process like ours.
    """
    folder = proxypy_path(given)
    if folder is None:
        return "skipped (proxy.py not importable; pip install --target DIR proxy.py)"
    port = free_port()
    argv = [sys.executable, "-m", "proxy", "--hostname", "127.0.0.1", "--port", str(port)]
    if not access_log:
        argv += ["--log-level", "WARNING"]
    if workers:
        argv += ["--num-workers", str(workers), "--num-acceptors", "1"]
    env = clean_env(PYTHONPATH=folder)
    cwd = Path(tempfile.mkdtemp(prefix="proxypy-", dir=tmp))
    name = "proxypy-1w" if workers == 1 else "proxypy"
    proc = stack.spawn(name, argv, port, cwd / "out.log", cwd=cwd, env=env)
    proc.access_log = proc.log if access_log else None
    return proc


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
    access_logs: bool = True,
) -> Proc | str:
    """Start the proxy called *name*; return it, or why it was skipped.

    *access_logs* false turns every proxy's access log off (``ours-nolog`` has it off always).
    """
    logs = access_logs
    try:
        if name == "ours":
            return start_ours(stack, tmp, origin, cache=False, access_log=logs, name=name)
        if name == "ours-logbeside":
            return start_ours(
                stack,
                tmp,
                origin,
                cache=False,
                access_log=logs,
                name=name,
                log_beside_blocklist=True,
            )
        if name == "ours-nolog":
            return start_ours(stack, tmp, origin, cache=False, access_log=False, name=name)
        if name == "baseline":
            if baseline is None or not (Path(baseline) / "proxy" / "__main__.py").is_file():
                return f"skipped (--baseline {baseline} is not a checkout of this project)"
            repo = Path(baseline)
            return start_ours(
                stack, tmp, origin, cache=False, access_log=logs, repo=repo, name=name
            )
        if name == "ours-nosplice":
            return start_ours(
                stack, tmp, origin, cache=False, access_log=logs, splice=False, name=name
            )
        if name == "ours-cache":
            return start_ours(stack, tmp, origin, cache=True, access_log=logs, name=name)
        if name == "ours-cachedir":
            return start_ours(
                stack, tmp, origin, cache=True, access_log=logs, name=name,
                cache_dir=tmp / "cache-dir",
            )  # fmt: skip
        if name == "ours-2w":
            return start_ours(
                stack, tmp, origin, cache=False, access_log=logs, workers=2, name=name
            )
        if name == "squid":
            return start_squid(stack, tmp, nofile, access_log=logs)
        if name == "squid-cache":
            return start_squid(stack, tmp, nofile, cache=True, access_log=logs)
        if name == "tinyproxy":
            return start_tinyproxy(stack, tmp, tunnels + 200, access_log=logs)
        if name == "floor":
            return start_floor(stack, tmp)
        if name == "proxypy":
            return start_proxypy(stack, tmp, proxypy, access_log=logs)
        if name == "proxypy-1w":
            return start_proxypy(stack, tmp, proxypy, access_log=logs, workers=1)
    except (OSError, RuntimeError) as exc:
        return f"skipped ({name} failed to start: {str(exc)[:200]})"
    return f"skipped (unknown proxy {name})"
