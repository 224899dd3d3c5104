"""Every origin of a driver run: the HTTP and HTTPS origins, raw TCP servers, special ports.

Theory of operation
-------------------
:class:`Origins` starts them all on ``127.0.0.1`` with port 0, in threads of the driver's
process: the routed HTTP origin and its HTTPS twin (:mod:`checks.http_origin`, whose
certificate comes from a CA that trustme makes for this run), and raw TCP servers
(:class:`RawOrigin`) for the tunnels: ``echo``, ``shout`` (answers once the client has finished
sending), ``firehose`` (sends without end), ``bye`` (says bye and closes) and ``holder`` (waits,
and counts the connections that end). Two ports provoke failures: one that refuses
connections, and, where the kernel drops SYNs to a full accept queue, one whose connect never
completes.
"""

from __future__ import annotations

import socket
import socketserver
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import checks.routes  # noqa: F401  (fills the HTTP origin's routes)
from checks.http_origin import SOCKET_TIMEOUT, Firehose, HttpOrigin, send_forever

Handler = Callable[["RawOrigin", socket.socket], None]


class RawOrigin(socketserver.ThreadingTCPServer):
    """A TCP server calling *handler(server, socket)* per connection, in its own thread."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.stopping = threading.Event()
        self.firehose = Firehose()
        self.ended = 0  # connections whose peer went away (holder)
        self.changed = threading.Condition()
        super().__init__(("127.0.0.1", 0), socketserver.BaseRequestHandler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True, name="raw-origin")

    @property
    def port(self) -> int:
        """The port the kernel picked."""
        return int(self.server_address[1])

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Run the handler on the connected socket."""
        request.settimeout(SOCKET_TIMEOUT)
        try:
            self.handler(self, request)
        except OSError:
            pass  # the peer reset or timed out: nothing to report from here

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Say nothing (see :meth:`finish_request`)."""

    def note_ended(self) -> None:
        """Count a connection whose peer went away, and wake whoever waits for it."""
        with self.changed:
            self.ended += 1
            self.changed.notify_all()

    def wait_ended(self, count: int, timeout: float) -> bool:
        """Wait until *count* connections have ended in all."""
        with self.changed:
            return self.changed.wait_for(lambda: self.ended >= count, timeout)

    def start(self) -> RawOrigin:
        """Serve in a daemon thread."""
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close."""
        self.stopping.set()
        self.shutdown()
        self.server_close()
        self.thread.join(5)


def echo_handler(server: RawOrigin, sock: socket.socket) -> None:
    """Send back everything, until the client finishes; then close."""
    while data := sock.recv(65536):
        sock.sendall(data)


def shout_handler(server: RawOrigin, sock: socket.socket) -> None:
    """Read until the client has finished sending (EOF), then answer in capitals and close."""
    received = bytearray()
    while data := sock.recv(65536):
        received += data
    sock.sendall(b"you said: " + bytes(received).upper())


def firehose_handler(server: RawOrigin, sock: socket.socket) -> None:
    """Send :data:`PATTERN` without end."""
    send_forever(sock, server.firehose, server.stopping)


def bye_handler(server: RawOrigin, sock: socket.socket) -> None:
    """Say bye and close."""
    sock.sendall(b"bye\n")


def holder_handler(server: RawOrigin, sock: socket.socket) -> None:
    """Wait until the peer goes away (EOF or reset), and count it."""
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass
    finally:
        server.note_ended()


@dataclass
class Origins:
    """Every origin of a run, plus a refused port and, where the kernel allows, a silent one."""

    workdir: Path
    http: HttpOrigin = field(init=False)
    https: HttpOrigin = field(init=False)
    echo: RawOrigin = field(init=False)
    shout: RawOrigin = field(init=False)
    firehose: RawOrigin = field(init=False)
    bye: RawOrigin = field(init=False)
    holder: RawOrigin = field(init=False)
    ca_pem: Path = field(init=False)
    refused_port: int = field(init=False)
    #: A port whose SYNs get no answer (a full accept queue), or None if this kernel answers.
    unanswered_port: int | None = field(init=False)
    _sockets: list[socket.socket] = field(default_factory=list)

    def start(self) -> Origins:
        """Start everything (trustme makes the CA and the HTTPS origin's certificate)."""
        import trustme

        ca = trustme.CA()
        self.ca_pem = self.workdir / "lab-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_pem))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert("origin.test", "localhost", "127.0.0.1").configure_cert(context)
        self.http = HttpOrigin().start()
        self.https = HttpOrigin(tls=context).start()
        self.echo = RawOrigin(echo_handler).start()
        self.shout = RawOrigin(shout_handler).start()
        self.firehose = RawOrigin(firehose_handler).start()
        self.bye = RawOrigin(bye_handler).start()
        self.holder = RawOrigin(holder_handler).start()
        self.refused_port = self._refusing_port()
        self.unanswered_port = self._unanswered_port()
        return self

    def _refusing_port(self) -> int:
        # Bound but not listening: the kernel answers a SYN with RST, "connection refused",
        # and nobody else can take the port while we hold it.
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self._sockets.append(sock)
        return int(sock.getsockname()[1])

    def _unanswered_port(self) -> int | None:
        # A listener whose accept queue is full and never drained drops further SYNs, so a
        # connect() to it hangs until the proxy's deadline: the way to provoke a 504.
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        self._sockets.append(listener)
        address = listener.getsockname()
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(address)
            self._sockets.append(filler)
        probe = socket.socket()
        probe.settimeout(0.5)
        try:
            probe.connect(address)
        except OSError:
            return int(address[1])  # the probe hung: SYNs are dropped, as wanted
        finally:
            probe.close()
        return None

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        """An ``http://`` URL on the HTTP origin."""
        return f"http://{host}:{self.http.port}{path}"

    def stop(self) -> None:
        """Stop every origin and close every socket held."""
        for server in (self.http, self.https, self.echo, self.shout, self.firehose):
            server.stop()
        for server in (self.bye, self.holder):
            server.stop()
        for sock in self._sockets:
            sock.close()
