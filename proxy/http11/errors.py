"""The one exception the parsers raise.

Theory of operation: a proxy that cannot parse a message must still answer something sensible,
so every error carries the status code to answer with: ``400`` for a malformed request, ``414``
for a request-line that is too long, ``431`` for too many or too large header fields, ``501``
for a transfer coding we do not implement, ``505`` for an HTTP version we do not speak, and
``502`` for anything wrong in a response from the origin (RFC 9110 section 15.6.3: the proxy
"received an invalid response from an inbound server"). After an error the connection cannot
be trusted any more (the message boundaries are lost), so the caller answers and closes.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """The peer broke the HTTP/1.1 rules; :attr:`status` is the status code to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        #: A short human-readable explanation, safe to log.
        self.message = message
        #: The HTTP status code the proxy should answer with.
        self.status = status

    def __repr__(self) -> str:
        return f"ProtocolError({self.message!r}, status={self.status})"
