"""One stored response as one row of the disk cache's index, and back, trusting nothing read.

Theory of operation: the disk index (``proxy.cache.disklayout``) keeps a
:class:`~proxy.cache.store.StoredResponse` minus its body in one SQLite row. Lists (header
fields, ``Vary`` names and values, RFC 9111 section 4.1) are stored as compact JSON, which
round-trips every latin-1 field value exactly; the ``Vary`` values are encoded the same way on
the way in and when a request is matched, so matching is one string comparison.

A row comes from a file that another process, an old version or a disk fault may have written,
so :func:`entry_from_row` checks every type and raises :class:`CorruptRow` rather than hand
the proxy a half-valid entry; the body is checked separately, by length and digest.
"""

from __future__ import annotations

import json
from typing import Any

from proxy.cache.store import StoredResponse
from proxy.http11.headers import Headers
from proxy.http11.serialize import serialize_response_head

#: The columns :func:`entry_from_row` reads, in its order.
COLUMNS = (
    "rowid, url, vary_names, vary_key, status, reason, headers, request_time, response_time, "
    "body_file, body_length, body_digest"
)

#: The columns :func:`row_for` fills, in its order.
INSERT_COLUMNS = (
    "url, vary_names, vary_key, status, reason, headers, request_time, response_time, "
    "body_file, body_length, body_digest, size, last_used"
)
INSERT = f"INSERT INTO variants ({INSERT_COLUMNS}) VALUES ({', '.join('?' * 13)})"
"""The statement that stores a :func:`row_for` row."""


class CorruptRow(ValueError):
    """An index row whose fields do not decode into a stored response."""


def encode(values: Any) -> str:
    """Compact, deterministic JSON: equal lists give equal strings."""
    return json.dumps(values, separators=(",", ":"), ensure_ascii=False)


def fields_text(headers: Headers) -> str:
    """Header fields as JSON ``[[name, value], ...]``, order and repeats kept."""
    return encode([list(field) for field in headers])


def row_for(entry: StoredResponse, body_file: str, body_digest: str, now: float) -> tuple[Any, ...]:
    """The values of :data:`INSERT_COLUMNS` for *entry*, whose body is in *body_file*."""
    return (
        entry.url,
        encode(list(entry.vary_names)),
        encode(list(entry.vary_key)),
        entry.status,
        entry.reason,
        fields_text(entry.headers),
        entry.request_time,
        entry.response_time,
        body_file,
        len(entry.body),
        body_digest,
        entry.compute_size(),
        now,
    )


def vary_names_from(text: object) -> tuple[str, ...]:
    """Decode the ``vary_names`` column; :class:`CorruptRow` unless a list of strings."""
    try:
        values = json.loads(text) if isinstance(text, str) else None
    except ValueError as error:
        raise CorruptRow("vary names") from error
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise CorruptRow("vary names")
    return tuple(values)


def entry_from_row(row: tuple[Any, ...], body: bytes) -> StoredResponse:
    """Rebuild the stored response of a :data:`COLUMNS` row with its (checked) *body*."""
    _, url, names, vary_key, status, reason, headers, request_time, response_time = row[:9]
    try:
        pairs = [(name, value) for name, value in json.loads(headers)]
        key = json.loads(vary_key)
        if not all(isinstance(v, str) for pair in pairs for v in pair):
            raise CorruptRow("header fields")
        if not isinstance(key, list) or not all(v is None or isinstance(v, str) for v in key):
            raise CorruptRow("vary key")
        if not isinstance(url, str) or not isinstance(reason, str):
            raise CorruptRow("url or reason")
        entry = StoredResponse(
            url=url,
            status=int(status),
            reason=reason,
            headers=Headers(pairs),
            body=body,
            request_time=float(request_time),
            response_time=float(response_time),
            vary_names=vary_names_from(names),
            vary_key=tuple(key),
        )
        _check_sendable(entry)
        return entry
    except (ValueError, TypeError) as error:
        if isinstance(error, CorruptRow):
            raise
        raise CorruptRow(str(error) or type(error).__name__) from error


def _check_sendable(entry: StoredResponse) -> None:
    """:class:`CorruptRow` unless *entry* can be sent as it is: a head the serializer accepts
    (no CR or LF in a value, token names, a status of 100 to 599) and a ``Content-Length``,
    if any, that is the length of the body it will be sent with (else the client's connection
    would lose its framing)."""
    if not 100 <= entry.status <= 599:
        raise CorruptRow(f"status {entry.status}")
    try:
        serialize_response_head(entry.status, entry.reason, entry.headers)
    except ValueError as error:
        raise CorruptRow(f"head: {error}") from error
    announced = entry.headers.get("content-length")
    if announced is not None and announced.strip() != str(len(entry.body)):
        raise CorruptRow("Content-Length is not the body's length")
