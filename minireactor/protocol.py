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

:class:`TransportLike` is the other half of the contract: the calls a protocol may make on its
transport. Code typed against it runs as well on a fake transport that records what it is
told, which is how the proxy's session is tested without a socket.
"""

from __future__ import annotations

from typing import Any
from typing import Protocol as Interface


class Protocol:
    """Base class with no-op callbacks; override the ones you need."""

    __slots__ = ()  # lets subclasses that declare slots do without a __dict__

    def connection_made(self, transport: TransportLike) -> None:
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


class TransportLike(Interface):
    """What a protocol may ask of its transport: :class:`~minireactor.transport.Transport`'s
    public surface, which a test's fake transport provides too."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``"peername"``, ``"sockname"`` or ``"socket"``."""
        ...

    def get_write_buffer_size(self) -> int:
        """Bytes accepted but not yet handed to the kernel."""
        ...

    @property
    def is_closing(self) -> bool:
        """True once close or abort has been called."""
        ...

    def set_protocol(self, protocol: Protocol) -> None:
        """Hand the connection to another protocol."""
        ...

    def pause_reading(self) -> None:
        """Stop reading."""
        ...

    def resume_reading(self) -> None:
        """Start reading again."""
        ...

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue *data*."""
        ...

    def cork(self) -> None:
        """Hold writes until :meth:`uncork`."""
        ...

    def uncork(self) -> None:
        """Send what was held, in as few system calls as possible."""
        ...

    def write_eof(self) -> None:
        """Half-close after flushing."""
        ...

    def close(self) -> None:
        """Close after flushing."""
        ...

    def abort(self, exc: BaseException | None = None) -> None:
        """Close now, resetting the connection."""
        ...
