"""The callbacks a transport drives.

Theory of operation
-------------------
A transport owns a socket and its buffers; a protocol owns the meaning of the bytes. The split is
Twisted's and asyncio's: the transport calls the protocol when something happens
(:meth:`Protocol.data_received`, :meth:`Protocol.eof_received`...) and the protocol calls the
transport to act (``write``, ``pause_reading``, ``close``). Neither blocks. The order of calls is
fixed::

    connection_made -> data_received* -> eof_received? -> connection_lost

with ``pause_writing``/``resume_writing`` interleaved when the transport's write buffer crosses its
water marks. Exactly one ``connection_lost`` ends every connection, whatever the cause, which is
the one place a protocol releases what it holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .transport import Transport


class Protocol:
    """Base class with no-op callbacks; override the ones you need."""

    __slots__ = ()  # lets subclasses that declare slots do without a __dict__

    def connection_made(self, transport: Transport) -> None:
        """The transport is ready; keep a reference to it."""

    def data_received(self, data: bytes) -> None:
        """Bytes arrived from the peer."""

    def eof_received(self) -> bool:
        """The peer half-closed its side; return True to keep writing, False to close."""
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        """The connection is closed; *exc* is None for a clean close."""

    def pause_writing(self) -> None:
        """The transport's write buffer is above its high-water mark: stop producing."""

    def resume_writing(self) -> None:
        """The write buffer drained below the low-water mark: produce again."""
