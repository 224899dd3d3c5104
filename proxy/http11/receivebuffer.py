"""The receive buffer: bytes fed in, not yet turned into events.

Theory of operation: the network hands us bytes in arbitrary pieces, and a parser takes them
back out from the front. Two costs must stay linear however the pieces are cut:

* Removing from the front. ``del buf[:n]`` moves every remaining byte, and
  ``buf = buf[n:]`` copies them; done once per line or chunk, a large buffer costs O(n^2).
  We keep a read offset instead and only compact (drop the consumed prefix in one move) when
  more than half of the storage is consumed, which costs O(1) amortised per byte.
* Looking for a line end. A parser that re-scans the whole partial line for ``\\n`` on every
  feed is quadratic when a peer dribbles one byte at a time, so
  :meth:`ReceiveBuffer.find_line_end` remembers how far it already looked (until bytes are
  removed from the front, which happens only once a line end was found).

Body pass-through is the hot path, so a feed into an empty buffer keeps the caller's
``bytes`` object as it is, and :meth:`ReceiveBuffer.take` hands the same object back when it
is wanted whole: a large body crosses the parser without being copied at all.

The buffer itself has no size cap; the readers cap what they must hold whole (heads, chunk-size
lines, trailers: see :mod:`proxy.http11.limits`), and the caller watches ``buffered`` to stop
reading from a peer whose body it cannot forward fast enough.
"""

from __future__ import annotations


class ReceiveBuffer:
    """A byte FIFO with a read offset, cheap front removal and zero-copy pass-through."""

    __slots__ = ("_data", "_start", "_no_lf")

    def __init__(self) -> None:
        # _data is either an immutable bytes object (fed into an empty buffer, not copied) or a
        # bytearray we own; the unread bytes are _data[_start:].
        self._data: bytes | bytearray = b""
        self._start = 0
        self._no_lf = 0  # this many bytes at the front are known to hold no LF

    def __len__(self) -> int:
        return len(self._data) - self._start

    @property
    def size(self) -> int:
        """``len(buffer)``; a property is one call cheaper than ``__len__`` through ``len()``."""
        return len(self._data) - self._start

    def append(self, data: bytes) -> None:
        """Add *data* at the end."""
        if not data:
            return
        if len(self) == 0:
            self._data = bytes(data)  # no copy when data already is bytes
            self._start = 0
            return
        if isinstance(self._data, bytes):
            self._data = bytearray(memoryview(self._data)[self._start :])
            self._start = 0
        elif self._start > len(self._data) // 2:
            del self._data[: self._start]  # one move, amortised over the consumed bytes
            self._start = 0
        self._data += data

    def find_line_end(self) -> int:
        """Return the offset (from the front) of the first LF, or ``-1``; never rescans."""
        index = self._data.find(b"\n", self._start + self._no_lf)
        if index < 0:
            self._no_lf = len(self)
            return -1
        return index - self._start

    def find(self, needle: bytes) -> int:
        """Return the offset (from the front) of *needle*, or ``-1``."""
        index = self._data.find(needle, self._start)
        return index - self._start if index >= 0 else -1

    def byte_at(self, offset: int) -> int:
        """Return the byte value at *offset* from the front (it must exist)."""
        return self._data[self._start + offset]

    def peek(self, size: int) -> bytes:
        """Return up to *size* bytes from the front without removing them."""
        return bytes(self._data[self._start : self._start + size])

    def take(self, size: int) -> bytes:
        """Remove and return up to *size* bytes from the front."""
        out = self.take_view(size)
        return bytes(out) if type(out) is memoryview else out

    def take_all(self) -> bytes:
        """Remove and return everything (the very object fed in, when possible)."""
        return self.take(len(self._data) - self._start)

    def take_view(self, size: int) -> bytes | memoryview:
        """Like :meth:`take`, but a slice of bytes fed in whole comes back as a view, not a copy.

        Bytes fed into an empty buffer are immutable, so a body that arrived behind its head
        is handed out as a read-only ``memoryview`` of them (64 KiB copied per response adds
        up). Bytes the buffer had to join are copied out, since the buffer reuses its storage.
        """
        data, start = self._data, self._start
        available = len(data) - start
        if size >= available:
            size = available
            self._data = b""
            self._start = 0
        else:
            self._start += size
        self._no_lf = 0
        if type(data) is bytes:
            if start == 0 and size == len(data):
                return data
            return memoryview(data)[start : start + size]
        with memoryview(data) as view:  # released at once: a viewed bytearray cannot grow
            return bytes(view[start : start + size])

    def skip(self, size: int) -> None:
        """Drop *size* bytes from the front."""
        self._start += min(size, len(self))
        self._no_lf = 0
        if self._start == len(self._data):
            self._data = b""
            self._start = 0
