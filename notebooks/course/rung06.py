"""Checkers for rung 6, sans-IO HTTP/1.1.

Theory of operation
-------------------
No socket here, as in the notebook: every answer is driven from bytes and compared with the
project's own parser (``proxy.http11``), the reference the course trusts because the test suite
checks it. ``06-chunked`` feeds each message whole, cut in two at every offset, and one byte at a
time, as the design card asks of every parser test: a decoder that is only right when a read
happens to end at a line boundary fails at some cut, and the checker says which. Malformed input
must raise :class:`~proxy.http11.ProtocolError` with status 400, never a ``ValueError`` from
``int()`` and never a hang. ``06-forward-head`` parses what the student serialises with a
:class:`~proxy.http11.RequestParser`, so its bytes must be valid HTTP before they are judged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from proxy.http11 import (
    NEED_DATA,
    Data,
    EndOfMessage,
    Headers,
    ProtocolError,
    Request,
    RequestParser,
    Response,
)
from proxy.http11.framing import response_framing

from .checks import Answer, Wrong, exercise, raised

_PIPELINED = (
    b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhel"
)


def _names(parser: RequestParser) -> list[str]:
    names = []
    while (event := parser.next_event()) is not NEED_DATA:
        names.append(type(event).__name__)
    return names


@exercise("06-predict-events", "Predict the events of a pipelined stream", kind="predict")
def predict_events(answer: Answer) -> str:
    first = answer.value("predicted_first")
    second = answer.value("predicted_second")
    parser = RequestParser()
    parser.feed(_PIPELINED)
    real_first = _names(parser)
    parser.feed(b"lo")
    real_second = _names(parser)
    for label, mine, real, hint in [
        (
            "after the first feed",
            first,
            real_first,
            "a GET with no body is complete at its blank line; body bytes are handed out as "
            "soon as they arrive, before the body is whole",
        ),
        (
            "after feeding b'lo'",
            second,
            real_second,
            "the last two bytes of the body, then the body is complete (Content-Length: 5)",
        ),
    ]:
        if not isinstance(mine, list) or not all(isinstance(name, str) for name in mine):
            raise Wrong(f"the prediction {label} should be a list of event names (strings)")
        if mine != real:
            raise Wrong(f"the events {label} are not {mine}", hint)
    return (
        f"right: {real_first} then {real_second}; two requests in one read, the second one's "
        "body handed out piece by piece"
    )


def _response(
    status: int, fields: Iterable[tuple[str, str]], version: str = "HTTP/1.1"
) -> Response:
    return Response(status, "", version, Headers(fields))


CL, TE = "Content-Length", "Transfer-Encoding"
_FRAMING_CASES: list[tuple[str, Response, str]] = [
    ("GET", _response(200, [(CL, "10")]), "rule 6: Content-Length"),
    ("HEAD", _response(200, [(CL, "10")]), "rule 1: a response to HEAD has no body"),
    ("GET", _response(204, [(CL, "10")]), "rule 1: 204 has no body"),
    ("GET", _response(304, [(TE, "chunked")]), "rule 1: 304 has no body"),
    ("GET", _response(100, []), "rule 1: 1xx has no body"),
    ("GET", _response(200, [(TE, "chunked")]), "rule 4: chunked is the final coding"),
    ("GET", _response(200, [(TE, "gzip, chunked")]), "rule 4: chunked is the final coding"),
    ("GET", _response(200, [(TE, "gzip")]), "rule 4: not chunked last: read until close"),
    ("GET", _response(200, [(TE, "chunked"), (CL, "5")]), "rule 3: TE and CL is refused (502)"),
    ("GET", _response(200, [(TE, "chunked")], "HTTP/1.0"), "TE in HTTP/1.0 is refused (502)"),
    ("GET", _response(200, [(TE, "chunked, chunked")]), "chunked applied twice is refused"),
    ("GET", _response(200, []), "rule 8: nothing says: read until close"),
    ("GET", _response(200, [(CL, "5, 5")]), "rule 5: repeated equal values are one length"),
    ("GET", _response(200, [(CL, "7"), (CL, "7")]), "rule 5: two equal fields are one length"),
    ("GET", _response(200, [(CL, "5, 6")]), "rule 5: conflicting lengths are refused (502)"),
    ("GET", _response(200, [(CL, "-1")]), "Content-Length is digits only (502)"),
    ("GET", _response(200, [(CL, "0x10")]), "Content-Length is digits only (502)"),
    ("POST", _response(201, [(CL, "0")]), "rule 6: a length of 0 is no body"),
    ("HEAD", _response(200, [(TE, "chunked")]), "rule 1 comes first: HEAD, no body"),
]


def _outcome(decide: Callable[..., Any], method: str, response: Response) -> Any:
    try:
        return decide(method, response.status, response.version, response.headers)
    except ProtocolError as error:
        return ("ProtocolError", error.status)


def _describe(method: str, response: Response) -> str:
    fields = ", ".join(f"{name}: {value}" for name, value in response.headers) or "no fields"
    return f"{method} -> {response.version} {response.status} with {fields}"


@exercise("06-framing", "Decide how a response body ends (RFC 9112 6.3)", kind="implement")
def framing(answer: Answer) -> str:
    decide = answer.function("body_framing")
    for method, response, rule in _FRAMING_CASES:
        mine = _outcome(decide, method, response)
        real = _outcome(response_framing, method, response)
        if mine != real:
            if isinstance(real, tuple):
                raise Wrong(
                    f"{_describe(method, response)}: you returned {mine!r}; a proxy must "
                    "refuse this framing",
                    f"{rule}: raise ProtocolError(message, 502)",
                )
            raise Wrong(f"{_describe(method, response)}: you returned {mine!r}", rule)
    return f"all {len(_FRAMING_CASES)} responses framed as RFC 9112 section 6.3 says"


_CHUNKED_HEAD = b"POST / HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n"
_VALID_BODIES = [
    b"5\r\nhello\r\n0\r\n\r\n",
    b"5\r\nhello\r\n8;note=extension\r\n, chunks\r\n0\r\nChecksum: abc123\r\n\r\n",
    b"0\r\n\r\n",
    b"A\r\n0123456789\r\nf\r\n0123456789abcde\r\n0\r\n\r\n",
    b"3\r\nabc\r\n3\r\ndef\r\n0\r\nA: 1\r\nB: 2\r\n\r\n",
    b"100\r\n" + bytes(range(256)) + b"\r\n0\r\n\r\n",
]
_MALFORMED_BODIES = [
    (b"zz\r\n", "a chunk-size that is not hexadecimal"),
    (b"-5\r\nhello\r\n0\r\n\r\n", "a negative chunk-size (int() accepts it)"),
    (b"0x5\r\nhello\r\n0\r\n\r\n", "a chunk-size with 0x (int(x, 16) accepts it)"),
    (b" 5\r\nhello\r\n0\r\n\r\n", "a space before the chunk-size (int() strips it)"),
    (b"5\r\nhelloXX0\r\n\r\n", "chunk data not followed by CRLF"),
    (b"\r\n", "an empty chunk-size line"),
    (b"5\nhello\r\n0\r\n\r\n", "a chunk-size line ending in a bare LF"),
    (b"1" + b"0" * 20 + b"\r\n", "a chunk-size of 21 hex digits (more than any body)"),
    (b"5\r\nhello\r\n0\r\nno colon here\r\n\r\n", "a trailer line without a colon"),
]


def _reference(body: bytes) -> tuple[bytes, list[tuple[str, str]]]:
    parser = RequestParser()
    parser.feed(_CHUNKED_HEAD + body)
    data, trailers = b"", []
    while (event := parser.next_event()) is not NEED_DATA:
        if isinstance(event, Data):
            data += bytes(event.data)
        elif isinstance(event, EndOfMessage):
            trailers = [(name.lower(), value) for name, value in event.trailers]
    return data, trailers


def _decode(decoder_class: Callable[[], Any], pieces: Iterable[bytes]) -> tuple[bytes, Any]:
    """Feed *pieces*, pulling events after each; return (body, trailers or None if no end)."""
    decoder = decoder_class()
    data, trailers, ends = b"", None, 0
    for piece in pieces:
        decoder.feed(piece)
        for _ in range(10_000):  # a bound: a decoder that never says NEED_DATA must not hang
            event = decoder.next_event()
            if event is NEED_DATA:
                break
            if isinstance(event, Data):
                data += bytes(event.data)
            elif isinstance(event, EndOfMessage):
                ends += 1
                trailers = [(name.lower(), value) for name, value in event.trailers]
                if ends > 1:
                    raise Wrong("EndOfMessage came twice for one body")
            else:
                raise Wrong(
                    f"next_event() returned {event!r}: expected Data, EndOfMessage or NEED_DATA"
                )
        else:
            raise Wrong("next_event() never returned NEED_DATA (10,000 events for one feed)")
    return data, trailers


def _splits(body: bytes) -> Iterable[tuple[str, list[bytes]]]:
    yield "fed whole", [body]
    for cut in range(1, len(body)):
        yield f"cut at byte {cut}", [body[:cut], body[cut:]]
    yield "fed one byte at a time", [body[i : i + 1] for i in range(len(body))]


@exercise("06-chunked", "A sans-IO chunked decoder, tested at every split", kind="implement")
def chunked(answer: Answer) -> str:
    decoder_class = answer.function("ChunkedDecoder")
    runs = 0
    for body in _VALID_BODIES:
        want = _reference(body)
        for how, pieces in _splits(body):
            try:
                got = _decode(decoder_class, pieces)
            except (Wrong, NotImplementedError):
                raise
            except Exception as error:
                raise Wrong(
                    f"{body!r} {how}: your decoder raised {raised(error)} on valid input",
                    "a read may end anywhere, even inside CRLF: keep what you cannot parse yet "
                    "in the buffer and return NEED_DATA",
                ) from None
            runs += 1
            if got[1] is None:
                raise Wrong(
                    f"{body!r} {how}: no EndOfMessage",
                    "the body ends after the zero-size chunk and the trailer section's empty line",
                )
            if got != want:
                raise Wrong(
                    f"{body!r} {how}: you decoded {got[0]!r} with trailers {got[1]}, "
                    f"expected {want[0]!r} with {want[1]}",
                    "only the chunk data belongs to the body; extensions after ';' are "
                    "discarded; trailers are 'name: value' lines",
                )

    decoder = decoder_class()  # body bytes come out before the chunk is complete
    decoder.feed(b"1000\r\n" + b"x" * 2048)
    early = b""
    while (event := decoder.next_event()) is not NEED_DATA:
        if isinstance(event, Data):
            early += bytes(event.data)
    if not early:
        raise Wrong(
            "with half of a 4096-byte chunk fed, no Data came out",
            "hand body bytes out as soon as they arrive: memory must not grow with the chunk size",
        )

    for body, what in _MALFORMED_BODIES:
        for how, pieces in (
            ("fed whole", [body]),
            ("fed one byte at a time", list(_splits(body))[-1][1]),
        ):
            try:
                _decode(decoder_class, pieces)
            except ProtocolError as error:
                if error.status != 400:
                    raise Wrong(
                        f"{what}: ProtocolError with status {error.status}, not 400"
                    ) from None
                continue
            except ValueError as error:
                raise Wrong(
                    f"{what} ({body!r}): you raised ValueError({error})",
                    "raise ProtocolError(message, 400): the session turns that into a 400 answer",
                ) from None
            raise Wrong(
                f"{what} ({body!r}, {how}) was accepted",
                "be as strict as RFC 9112 section 7.1: 1*HEXDIG, CRLF only, a bounded size",
            )
    return (
        f"{len(_VALID_BODIES)} bodies decoded right in {runs} ways (whole, every cut, byte by "
        f"byte); data streamed before its chunk ended; {len(_MALFORMED_BODIES)} malformed "
        "bodies refused with 400"
    )


_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "transfer-encoding",
}

_FORWARD_CASES: list[tuple[Request, str, str, list[str]]] = [
    (
        Request(
            "GET",
            "http://example.test:8080/a/b?c=d",
            "HTTP/1.1",
            Headers(
                [
                    ("Host", "example.test:8080"),
                    ("User-Agent", "curl/8"),
                    ("Proxy-Connection", "keep-alive"),
                    ("Accept", "*/*"),
                ]
            ),
        ),
        "/a/b?c=d",
        "example.test:8080",
        [],
    ),
    (
        Request(
            "GET",
            "http://example.test",
            "HTTP/1.1",
            Headers(
                [
                    ("Host", "wrong.test"),
                    ("Connection", "keep-alive, X-Secret"),
                    ("X-Secret", "for the proxy only"),
                    ("Keep-Alive", "timeout=5"),
                    ("Proxy-Authorization", "Basic dTpw"),
                    ("Cookie", "a=1"),
                    ("TE", "trailers"),
                    ("Via", "1.0 fred"),
                    ("Upgrade", "websocket"),
                ]
            ),
        ),
        "/",
        "example.test",
        ["1.0 fred"],
    ),
    (
        Request(
            "HEAD",
            "http://example.test:80/index.html",
            "HTTP/1.0",
            Headers([("Accept-Language", "fr"), ("Accept-Language", "en")]),
        ),
        "/index.html",
        "example.test",
        [],
    ),
]


@exercise("06-forward-head", "Rewrite a proxy request for the origin", kind="design", core=False)
def forward_head(answer: Answer) -> str:
    rewrite = answer.function("origin_head")
    for request, path, host, earlier_via in _FORWARD_CASES:
        original = Headers(list(request.headers))
        head = rewrite(request, "minireactor")
        label = f"{request.method} {request.target}"
        if not isinstance(head, bytes):
            raise Wrong(
                f"{label}: origin_head returned {type(head).__name__}, not bytes",
                "serialize_request_head(method, target, headers) gives the bytes",
            )
        parser = RequestParser()
        parser.feed(head)
        try:
            event = parser.next_event()
        except ProtocolError as error:
            raise Wrong(f"{label}: the origin could not parse your head: {error.message}") from None
        if not isinstance(event, Request):
            raise Wrong(f"{label}: your bytes are not a whole request head: {head!r}")
        if (event.method, event.target) != (request.method, path):
            raise Wrong(
                f"{label}: the request-line is {event.method} {event.target}",
                f"the origin expects origin-form, here {path!r} (RFC 9112 section 3.2.1)",
            )
        fields = event.headers
        if fields.get_all("host") != [host]:
            raise Wrong(
                f"{label}: Host is {fields.get_all('host')}, should be [{host!r}]",
                "Host comes from the absolute URL (RFC 9112 section 3.2.2); the default port is "
                "left out",
            )
        named = {token.strip().lower() for token in original.get_list("connection")}
        leaked = sorted({name.lower() for name, _ in fields} & (_HOP_BY_HOP | named))
        if leaked:
            raise Wrong(
                f"{label}: {', '.join(leaked)} reached the origin",
                "remove the hop-by-hop fields, and every field that Connection names "
                "(RFC 9110 section 7.6.1)",
            )
        if fields.get_list("via") != [*earlier_via, f"{request.version[5:]} minireactor"]:
            raise Wrong(
                f"{label}: Via is {fields.get_list('via')}",
                "append 'version pseudonym' (here '"
                f"{request.version[5:]} minireactor') after any Via already there",
            )
        kept = [
            (name.lower(), value)
            for name, value in original
            if name.lower() not in _HOP_BY_HOP | named | {"host", "via"}
        ]
        forwarded = [
            (name.lower(), value) for name, value in fields if name.lower() not in {"host", "via"}
        ]
        if forwarded != kept:
            raise Wrong(
                f"{label}: the end-to-end fields are {forwarded}, expected {kept}",
                "every other field goes through unchanged, in its order",
            )
        if list(request.headers) != list(original):
            raise Wrong(f"{label}: origin_head changed the request it was given")
    return (
        "origin-form targets, Host from the URL, hop-by-hop fields (and those Connection names) "
        "removed, Via appended, everything else passed through in order"
    )
