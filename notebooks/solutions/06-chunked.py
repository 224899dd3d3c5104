# Exercise 06-chunked: a sans-IO state machine: size line, data, CRLF, ..., trailers.
import re

from proxy.http11 import NEED_DATA, Data, EndOfMessage, Headers, ProtocolError

SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[^\x00-\x08\x0a-\x1f\x7f]*)?")
MAX_LINE = 4096


class ChunkedDecoder:
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.state = "size"  # size -> data -> crlf -> size ... -> trailers -> done
        self.remaining = 0
        self.trailers = Headers()

    def feed(self, data: bytes) -> None:
        self.buffer += data

    def _line(self) -> bytes | None:
        """The next CRLF-terminated line without its CRLF, or None if it is not all here."""
        end = self.buffer.find(b"\n")
        if end < 0:
            if len(self.buffer) > MAX_LINE:
                raise ProtocolError("chunk line too long", 400)
            return None
        if end == 0 or self.buffer[end - 1] != 13:
            raise ProtocolError("line ends in a bare LF", 400)
        line = bytes(self.buffer[: end - 1])
        del self.buffer[: end + 1]
        return line

    def next_event(self) -> Data | EndOfMessage | object:
        while True:
            if self.state == "size":
                line = self._line()
                if line is None:
                    return NEED_DATA
                match = SIZE_LINE.fullmatch(line)
                if match is None:
                    raise ProtocolError("malformed chunk-size line", 400)
                self.remaining = int(match.group(1), 16)
                self.state = "data" if self.remaining else "trailers"
            elif self.state == "data":
                if not self.buffer:
                    return NEED_DATA
                piece = bytes(self.buffer[: self.remaining])  # what has arrived: stream it
                del self.buffer[: len(piece)]
                self.remaining -= len(piece)
                if not self.remaining:
                    self.state = "crlf"
                return Data(piece)
            elif self.state == "crlf":
                if len(self.buffer) < 2:
                    return NEED_DATA
                if self.buffer[:2] != b"\r\n":
                    raise ProtocolError("chunk data not followed by CRLF", 400)
                del self.buffer[:2]
                self.state = "size"
            elif self.state == "trailers":
                line = self._line()
                if line is None:
                    return NEED_DATA
                if not line:
                    self.state = "done"
                    return EndOfMessage(self.trailers)
                name, colon, value = line.partition(b":")
                if not colon or not name or name != name.strip():
                    raise ProtocolError("malformed trailer field", 400)
                self.trailers.add(name.decode("latin-1"), value.strip(b" \t").decode("latin-1"))
            else:
                return NEED_DATA
