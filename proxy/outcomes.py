"""How a request turns out, and how a connection ends: the second half of ClientSession.

Theory of operation
-------------------
:class:`~proxy.session.ClientSession` reads a request and decides what to do with it; this
module holds what happens once it has decided, as a mixin the session class inherits, so the
state machine's two halves can each be read in one sitting:

* **TUNNEL_OPEN**: ``200 Connection established``, then the client's transport and the
  origin's are joined by a :class:`~proxy.tunnel.Tunnel` (also after a ``101`` upgrade).
* **ANSWERING**: :meth:`Outcomes.answer` writes a complete response the proxy made itself (an
  error page, a refusal, its own status pages), first reading what is left of the request so
  the connection can stay alive.
* **The end of a request**: :meth:`Outcomes.finish_request` writes the access-log line and
  either goes back to READING_REQUEST (keep-alive, with any pipelined request already
  buffered picked up on the next tick) or closes.
* **The end of a connection**: shutdown, abort at the end of the grace period, and
  :meth:`Outcomes.internal_error`, where a bug becomes a 500 (or a reset) for one client.
"""

from __future__ import annotations

import logging
import socket
import sys

from minireactor import Protocol, Transport

from .guard import guarded
from .http11 import NEED_DATA, EndOfMessage, Headers, ProtocolError, Request, RequestParser
from .http11.framing import persists
from .replies import error_page, simple_response
from .states import SessionState
from .stats import RequestRecord
from .tunnel import Tunnel

log = logging.getLogger("proxy.session")
S = SessionState

# What a session holds once its connection is a tunnel: a parser that has seen EOF (feeding it
# raises, it buffers nothing) and an empty header list. Shared, never written to.
SPENT_PARSER = RequestParser()
SPENT_PARSER.feed_eof()
NO_HEADERS = Headers()


class Outcomes:
    """The ways a request ends; mixed into :class:`~proxy.session.ClientSession`."""

    __slots__ = ()

    def exchange_finished(self, reusable: bool) -> None:
        """The response is complete: log it and read the next request or close."""
        self.exchange = None
        self.finish_request(reusable)

    def upstream_failed_midway(self) -> None:
        """The origin vanished mid-body: reset the client, never fake a complete message."""
        self.exchange = None
        self.result = self.result + "_ABORTED"
        self.fire("upstream_failed")
        self.log_request()
        if self.transport is not None:
            # What the client was promised so far goes out before the reset, not dropped.
            self.transport.uncork()
            self.transport.abort(ConnectionAbortedError("origin closed mid-response"))

    # -- TUNNEL_OPEN -----------------------------------------------------------------------------

    def _open_tunnel(self, sock: socket.socket) -> None:
        assert self.transport is not None
        upstream_transport = Transport(self.reactor, sock, Protocol())
        self.fire("tunnel_connected")
        self.status = 200
        self.result = "TCP_TUNNEL"
        self.send(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.start_tunnel(upstream_transport, self.parser.take_trailing_data())

    def start_tunnel(self, upstream: Transport, early_up: bytes, early_down: bytes = b"") -> None:
        """Join the client and *upstream* transports into a byte relay."""
        assert self.transport is not None
        self.tunnel = Tunnel(
            self.transport,
            upstream,
            owner=self,
            sweep=self.ctx.tunnel_sweep,
            pipes=self.ctx.pipes,
        )
        self._shed_http_state()
        self.tunnel.start(early_up, early_down)

    def _shed_http_state(self) -> None:
        # From here on the connection carries opaque bytes: what served HTTP only costs memory,
        # and 10,000 idle tunnels multiply it. The parser (its buffers) goes; the request
        # becomes what the access-log line needs: the method and version interned, the URL as
        # it will be logged (so the parsed target can go too), and a shared empty header list.
        self.parser = SPENT_PARSER
        self.deadline.close()  # the tunnel's idle sweep takes over: no heap entry left behind
        request, target = self.request, self.target
        if request is None:
            return
        url = request.target
        if target is not None:
            url = f"{target.host}:{target.port}" if request.method == "CONNECT" else target.url
        method, version = sys.intern(request.method), sys.intern(request.version)
        self.request = Request(method, url, version, NO_HEADERS)
        self.target = None

    @guarded
    def tunnel_closed(self, tunnel: Tunnel, exc: BaseException | None) -> None:
        """The tunnel ended: count its bytes, log the request, and close the session."""
        self.bytes_sent += tunnel.bytes_down
        self.ctx.stats.bytes_to_clients += tunnel.bytes_down
        self.ctx.stats.bytes_from_clients += tunnel.bytes_up
        self.tunnel = None
        self.log_request()
        self.fire("tunnel_closed")
        self.fire("closed")
        self.ctx.session_closed(self)

    def send(self, data: bytes) -> None:
        """Write response bytes to the client, counting them."""
        if self.transport is not None and data:
            self.response_started = True
            self.bytes_sent += len(data)
            self.ctx.stats.bytes_to_clients += len(data)
            self.transport.write(data)

    # -- ANSWERING: responses the proxy writes itself --------------------------------------------

    def answer(
        self,
        status: int,
        body: bytes,
        *,
        content_type: str = "text/html; charset=utf-8",
        close: bool = False,
        result: str = "NONE",
        extra: Headers | None = None,
    ) -> None:
        """Write a complete local response and finish the request."""
        request = self.request
        reusable = (
            not close
            and request is not None
            and request.method != "CONNECT"
            and self.finish_reading_request()
            and self._client_wants_more(request)
        )
        self.status = status
        self.result = result
        head_only = request is not None and request.method == "HEAD"
        self.send(
            simple_response(
                status,
                body,
                content_type=content_type,
                close=not reusable,
                head_only=head_only,
                extra=extra,
            )
        )
        self.finish_request(reusable)

    def answer_error(
        self,
        status: int,
        detail: str,
        *,
        close: bool = False,
        result: str = "NONE",
        extra: Headers | None = None,
    ) -> None:
        """Answer with a short error page naming *detail*; it is logged too."""
        if status >= 500 or status == 408:
            log.info("%s %s: %d %s", self.client, self._request_label(), status, detail)
        self.answer(status, error_page(status, detail), close=close, result=result, extra=extra)

    def finish_reading_request(self) -> bool:
        """Consume what is left of the current request; False if it has not all arrived.

        Idempotent: once the request's end was seen (here or by the exchange forwarding its
        body) it returns True without touching the parser, which may already hold the next
        pipelined request.
        """
        while not self.request_fully_read:
            try:
                event = self.parser.next_event()
            except ProtocolError:
                return False
            if isinstance(event, EndOfMessage):
                self.request_fully_read = True
            elif event is NEED_DATA or not hasattr(event, "data"):
                return False
        return True

    def _client_wants_more(self, request: Request) -> bool:
        # After the client's EOF, requests it pipelined before it are still answered.
        return (
            persists(request.version, request.connection)
            and (not self.client_eof or self.parser.buffered > 0)
            and not self.ctx.shutting_down
        )

    def client_keeps_alive(self) -> bool:
        """Whether the client connection may carry another request after this one."""
        return self.request is not None and self._client_wants_more(self.request)

    # -- finishing -------------------------------------------------------------------------------

    def finish_request(self, reusable: bool) -> None:
        """Log the request, then go back to READING_REQUEST or close."""
        self.log_request()
        if reusable:
            self.fire("response_done")
            self.request = None
            self._arm_request_timer()
            assert self.transport is not None
            self.transport.resume_reading()
            if self.parser.buffered:
                self.reactor.call_soon(self._continue_pipeline)
        else:
            self.fire("response_done_close")
            self._close()

    @guarded
    def _continue_pipeline(self) -> None:
        if self.state is S.READING_REQUEST:
            self.read_request()

    def log_request(self) -> None:
        """Write the access-log line of the current request (once) and release its cache plan."""
        if self.logged:
            return
        self.logged = True
        if self.cache_plan is not None and self.ctx.cache_step is not None:
            self.ctx.cache_step.request_ended(self)
        request = self.request
        url = self.target.url if self.target is not None else (request.target if request else "-")
        if request is not None and request.method == "CONNECT" and self.target is not None:
            url = f"{self.target.host}:{self.target.port}"
        self.ctx.stats.finished(
            RequestRecord(
                at=self.ctx.stats.clock(),
                client=self.client,
                method=request.method if request else "-",
                url=url,
                status=self.status,
                bytes_sent=self.bytes_sent,
                duration=self.reactor.time() - self.started,
                result=self.result,
            )
        )

    def _request_label(self) -> str:
        if self.request is None:
            return "-"
        return f"{self.request.method} {self.request.target[:200]}"

    def _close(self) -> None:
        self._cancel_timer()
        if self.transport is not None:
            self.transport.close()

    def shutdown(self) -> None:
        """The proxy is stopping: close now if idle, else finish the exchange and close."""
        if self.state is S.READING_REQUEST and not self.parser.buffered:
            self.fire("shutdown")
            self._close()

    def abort(self) -> None:
        """Drop the connection now (end of the shutdown grace period)."""
        if self.tunnel is not None:
            self.tunnel.abort()
        elif self.transport is not None:
            self.transport.abort()

    def internal_error(self, exc: BaseException) -> None:
        """A bug surfaced while serving this client: 500 if we can, else reset."""
        log.error("internal error serving %s %s", self.client, self._request_label(), exc_info=exc)
        if self.exchange is not None:
            self.exchange.client_lost()
            self.exchange = None
        if self.state is S.CLOSED:
            return
        if self.state is not S.CLOSING:
            self.fire("internal_error")
        if not self.response_started and self.transport is not None:
            self.status = 500
            self.send(
                simple_response(500, error_page(500, "internal error in the proxy"), close=True)
            )
            self.log_request()
            self._close()
        elif self.transport is not None:
            self.transport.abort(exc)
