"""End to end: CONNECT tunnels and protocol upgrades through the running proxy.

TLS stays end to end: the client checks the origin's certificate (issued by the test CA), never
one of the proxy's. Raw-socket tests use a small TCP server started per test, so what the
origin received can be checked byte for byte.
"""

from __future__ import annotations

import http.client
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from conftest import require_program
from support import read_response, recv_until_closed

ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"


class TcpServer:
    """A loopback TCP server running *handler(conn)* on a thread per connection."""

    def __init__(self, handler: Callable[[socket.socket], None]) -> None:
        self.handler = handler
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received: list[bytes] = []
        self.connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(20)
        try:
            self.handler(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
        except OSError:
            pass
        self.listener.close()
        for conn in self.connections:
            conn.close()
        self._thread.join(5)


@pytest.fixture
def tcp_server() -> Iterator[Callable[[Callable[[socket.socket], None]], TcpServer]]:
    servers: list[TcpServer] = []

    def start(handler: Callable[[socket.socket], None]) -> TcpServer:
        server = TcpServer(handler)
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def echo_server(tcp_server) -> TcpServer:
    """Echoes every byte; on EOF from the client it sends ``<eof>`` and closes."""

    def echo(conn: socket.socket) -> None:
        while data := conn.recv(65536):
            server.received.append(data)
            conn.sendall(data)
        conn.sendall(b"<eof>")

    server = tcp_server(echo)
    return server


def connect_through(
    proxy, port: int, early: bytes = b"", host: str = "origin.test"
) -> socket.socket:
    """Open a tunnel to ``host:port``; *early* rides in the same packet as the CONNECT."""
    sock = proxy.connect()
    authority = f"{host}:{port}"
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode() + early)
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)  # one at a time: bytes after the head belong to the tunnel
        assert byte, f"closed before the CONNECT answer: {head!r}"
        head += byte
    assert head == ESTABLISHED
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data


# -- TLS through the tunnel --------------------------------------------------------------------


def test_https_connection_tunnel_keeps_tls_end_to_end(proxy, tls_origin, client_tls_context):
    conn = http.client.HTTPSConnection(
        proxy.host, proxy.port, context=client_tls_context, timeout=20
    )
    try:
        conn.set_tunnel("origin.test", tls_origin.port)
        conn.request("GET", "/hello")
        response = conn.getresponse()
        assert response.status == 200
        assert response.read() == b"hello from the origin\n"
        cert = conn.sock.getpeercert()
    finally:
        conn.close()
    names = {value for kind, value in cert["subjectAltName"] if kind == "DNS"}
    assert "origin.test" in names  # the origin's own certificate, not one the proxy made
    # The origin saw origin-form (it was spoken to directly, inside TLS), not the proxy's form.
    assert tls_origin.requests[-1][1] == "/hello"


def test_curl_https_through_the_proxy(proxy, tls_origin, ca, tmp_path):
    curl = require_program("curl")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    out = subprocess.run(
        [
            curl,
            "-sS",
            "--max-time",
            "20",
            "--cacert",
            str(ca_file),
            "-x",
            proxy.url,
            f"https://127.0.0.1:{tls_origin.port}/hello",
        ],
        capture_output=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"hello from the origin\n"


# -- raw tunnels -------------------------------------------------------------------------------


def test_early_bytes_behind_connect_reach_the_origin(proxy, echo_server):
    with connect_through(proxy, echo_server.port, early=b"EARLY-HELLO") as sock:
        assert recv_exactly(sock, len(b"EARLY-HELLO")) == b"EARLY-HELLO"
        sock.sendall(b"and more")
        assert recv_exactly(sock, len(b"and more")) == b"and more"
    assert b"".join(echo_server.received).startswith(b"EARLY-HELLO")


def test_half_close_still_delivers_the_reply(proxy, echo_server):
    with connect_through(proxy, echo_server.port) as sock:
        sock.sendall(b"ping")
        assert recv_exactly(sock, 4) == b"ping"
        sock.shutdown(socket.SHUT_WR)
        # The origin sees EOF only through the proxy's half-close, and answers after it.
        assert recv_until_closed(sock) == b"<eof>"


def test_large_transfer_both_ways(proxy, echo_server):
    payload = bytes(range(256)) * 16384  # 4 MiB
    with connect_through(proxy, echo_server.port) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        try:
            assert recv_exactly(sock, len(payload)) == payload
        finally:
            sender.join(20)


def test_connect_to_unresolvable_host_is_502(proxy):
    with proxy.connect() as sock:
        sock.sendall(b"CONNECT nowhere.test:443 HTTP/1.1\r\nHost: nowhere.test:443\r\n\r\n")
        status, _, body = read_response(sock)
        assert status == 502
        assert b"nowhere.test" in body
        assert recv_until_closed(sock) == b""  # closed: no tunnel follows


def test_connect_to_a_port_not_allowed_is_403(make_proxy, echo_server):
    proxy = make_proxy(connect_ports=frozenset({443}))
    with proxy.connect() as sock:
        authority = f"origin.test:{echo_server.port}"
        sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        status, _, body = read_response(sock)
    assert status == 403
    assert b"443" in body
    assert echo_server.connections == []


def test_idle_tunnel_is_closed(make_proxy, echo_server):
    proxy = make_proxy(idle_timeout=0.5)
    with connect_through(proxy, echo_server.port) as sock:
        started = time.monotonic()
        sock.settimeout(15)
        rest = recv_until_closed(sock)
        waited = time.monotonic() - started
    assert rest in (b"", b"<eof>")
    assert 0.4 <= waited < 10, waited


# -- Upgrade: a 101 turns the connection into a relay ------------------------------------------


def _upgrading_origin(conn: socket.socket, seen: list[bytes]) -> None:
    head = b""
    while b"\r\n\r\n" not in head:
        data = conn.recv(65536)
        if not data:
            return
        head += data
    seen.append(head)
    conn.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    rest = head.partition(b"\r\n\r\n")[2]
    if rest:
        conn.sendall(rest)
    while data := conn.recv(65536):
        conn.sendall(data)


def test_upgrade_relays_bytes_both_ways(proxy, tcp_server):
    seen: list[bytes] = []
    server = tcp_server(lambda conn: _upgrading_origin(conn, seen))
    url = f"http://origin.test:{server.port}/ws"
    with proxy.connect() as sock:
        sock.sendall(
            f"GET {url} HTTP/1.1\r\nHost: origin.test:{server.port}\r\n"
            "Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            data = sock.recv(1)
            assert data, head
            head += data
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"upgrade: websocket" in head.lower()
        for message in (b"frame one", b"frame two" * 1000):
            sock.sendall(message)
            assert recv_exactly(sock, len(message)) == message
    request_head = seen[0].lower()
    assert request_head.startswith(b"get /ws http/1.1")
    assert b"upgrade: websocket" in request_head
    assert b"connection: upgrade" in request_head
