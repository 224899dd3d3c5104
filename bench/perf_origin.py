"""A small, fast static origin for the benchmark when nginx is not installed.

Theory of operation
-------------------
``python bench/perf_origin.py --root DIR --port P --tls-port Q --cert C --key K`` serves the
files of *DIR* on 127.0.0.1 over HTTP/1.1 (keep-alive, ``GET`` and ``HEAD`` only) and the same
over TLS. It is asyncio with as little per-request work as possible: the head is found with one
``readuntil``, the response head is built from a cache of file sizes, and bodies go out with
``loop.sendfile`` (the kernel's ``sendfile`` for plain TCP; asyncio falls back to reads for
TLS). Like nginx in the benchmark, it sends ``Cache-Control: max-age=3600`` so a caching proxy
may serve repeats itself. It stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
from pathlib import Path

MAX_HEAD = 16 * 1024


def _head(status: str, length: int, close: bool) -> bytes:
    connection = "close" if close else "keep-alive"
    return (
        f"HTTP/1.1 {status}\r\nServer: perf-origin\r\nContent-Length: {length}\r\n"
        f"Content-Type: application/octet-stream\r\nCache-Control: max-age=3600\r\n"
        f"Connection: {connection}\r\n\r\n"
    ).encode()


async def _serve(root: Path, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    loop = asyncio.get_running_loop()
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            line, _, rest = head.partition(b"\r\n")
            parts = line.split(b" ")
            lower = rest.lower()
            close = (b"connection: close" in lower) or (
                parts[-1] == b"HTTP/1.0" and b"connection: keep-alive" not in lower
            )
            path = parts[1].split(b"?")[0].decode("latin-1") if len(parts) == 3 else ""
            if "://" in path:
                path = "/" + path.split("/", 3)[-1]
            file = root / path.lstrip("/")
            if parts[0] not in (b"GET", b"HEAD") or ".." in path or not file.is_file():
                writer.write(_head("404 Not Found", 0, close))
            else:
                size = file.stat().st_size
                writer.write(_head("200 OK", size, close))
                if parts[0] == b"GET":
                    with open(file, "rb") as handle:
                        await loop.sendfile(writer.transport, handle)
            await writer.drain()
            if close:
                return
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main_async(args: argparse.Namespace) -> None:
    """Listen on both ports until SIGTERM or SIGINT."""
    root = Path(args.root)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _serve(root, reader, writer)

    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(args.cert, args.key)
    kw = {"limit": MAX_HEAD, "backlog": 4096}
    plain = await asyncio.start_server(handle, "127.0.0.1", args.port, **kw)
    secure = await asyncio.start_server(handle, "127.0.0.1", args.tls_port, ssl=tls, **kw)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with plain, secure:
        await stop.wait()


def main() -> None:
    """Parse the flags and serve."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tls-port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
