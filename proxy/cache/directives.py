"""Parsing the fields a cache reads: ``Cache-Control``, HTTP-dates and entity tags.

Theory of operation: every caching decision starts from a few header fields, so their syntax is
kept here, away from the rules that use them.

* ``Cache-Control`` (RFC 9111 section 5.2) is a comma-separated list of directives, each a
  case-insensitive token with an optional ``=argument``; the argument is a token or a
  quoted-string, and a quoted-string may itself contain commas
  (``private="Set-Cookie, X-Id"``), so the field is split by a small scanner rather than by
  ``str.split``. When a directive repeats, the first occurrence wins (section 4.2.1 allows that).
* ``delta-seconds`` arguments (section 1.2.2) are non-negative integers; a value too large to
  represent becomes 2147483648, and an invalid one is read as ``0`` so the response is
  treated as stale, as section 5.2 encourages for invalid freshness information.
* HTTP-dates (RFC 9110 section 5.6.7) come in three historical formats; ``email.utils``
  parses all of them. An unparsable date gives ``None`` and the caller decides what that means
  (an invalid ``Expires`` means "already expired", RFC 9111 section 5.3).
* Entity tags (RFC 9110 section 8.8.3) are opaque quoted strings, optionally prefixed by ``W/``
  for weak ones. Caches compare them with the *weak comparison* (section 8.8.3.2): two tags match
  when their opaque parts are equal, whatever their weakness.
"""

from __future__ import annotations

import email.utils
from collections.abc import Iterable
from datetime import UTC

from proxy.http11.headers import Headers

#: The value a cache uses for a ``delta-seconds`` too large to represent (RFC 9111 §1.2.2).
DELTA_SECONDS_MAX = 2147483648


class CacheControl:
    """The directives of every ``Cache-Control`` field of one message (RFC 9111 section 5.2).

    Directive names are lower-cased; each maps to its argument with any quotes removed, or to
    ``None`` when it has none.

    >>> cc = CacheControl.parse(['max-age=60, private="Set-Cookie, X-Id"'])
    >>> cc.seconds("max-age"), cc.field_names("private")
    (60, ['set-cookie', 'x-id'])
    """

    __slots__ = ("directives",)

    def __init__(self, directives: dict[str, str | None] | None = None) -> None:
        self.directives: dict[str, str | None] = dict(directives or {})

    @classmethod
    def parse(cls, values: Iterable[str]) -> CacheControl:
        """Parse the values of the ``Cache-Control`` fields of one message, in order."""
        directives: dict[str, str | None] = {}
        for value in values:
            for name, argument in _scan(value):
                directives.setdefault(name, argument)
        return cls(directives)

    @classmethod
    def from_headers(cls, headers: Headers) -> CacheControl:
        """Parse every ``Cache-Control`` field of *headers*."""
        return cls.parse(headers.get_all("Cache-Control"))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self.directives

    def __bool__(self) -> bool:
        return bool(self.directives)

    def __repr__(self) -> str:
        return f"CacheControl({self.directives!r})"

    def argument(self, name: str) -> str | None:
        """Return the argument of directive *name*, or ``None`` if absent or bare."""
        return self.directives.get(name.lower())

    def seconds(self, name: str) -> int | None:
        """Return the ``delta-seconds`` argument of *name*; ``None`` if the directive is absent.

        A present directive with a missing or invalid argument gives ``0`` (treat as stale,
        RFC 9111 section 5.2); a huge one is capped at :data:`DELTA_SECONDS_MAX` (section 1.2.2).
        """
        name = name.lower()
        if name not in self.directives:
            return None
        return parse_delta_seconds(self.directives[name])

    def field_names(self, name: str) -> list[str]:
        """Return the lower-cased field names listed in the argument of *name* (may be empty).

        Used for the qualified forms ``no-cache="Set-Cookie"`` and ``private="X-Id"``
        (RFC 9111 sections 5.2.2.4 and 5.2.2.7).
        """
        argument = self.argument(name)
        if not argument:
            return []
        return [part.strip().lower() for part in argument.split(",") if part.strip()]


def _scan(value: str) -> list[tuple[str, str | None]]:
    """Split one ``Cache-Control`` value into ``(name, argument)`` pairs, honouring quotes."""
    pairs: list[tuple[str, str | None]] = []
    i, n = 0, len(value)
    while i < n:
        # Name: everything up to '=' or ','.
        start = i
        while i < n and value[i] not in "=,":
            i += 1
        name = value[start:i].strip().lower()
        argument: str | None = None
        if i < n and value[i] == "=":
            i += 1
            while i < n and value[i] in " \t":
                i += 1
            if i < n and value[i] == '"':
                i += 1
                chars: list[str] = []
                while i < n and value[i] != '"':
                    if value[i] == "\\" and i + 1 < n:
                        i += 1
                    chars.append(value[i])
                    i += 1
                i += 1  # closing quote (or end of value)
                argument = "".join(chars)
                while i < n and value[i] != ",":
                    i += 1  # skip junk after the quoted string
            else:
                start = i
                while i < n and value[i] != ",":
                    i += 1
                argument = value[start:i].strip()
        i += 1  # the comma
        if name:
            pairs.append((name, argument))
    return pairs


def parse_delta_seconds(argument: str | None) -> int:
    """Read a ``delta-seconds`` argument (RFC 9111 section 1.2.2); invalid values give ``0``."""
    if argument is None:
        return 0
    argument = argument.strip()
    if not argument.isdigit() or not argument.isascii():
        return 0
    return min(int(argument), DELTA_SECONDS_MAX)


def parse_http_date(value: str | None) -> float | None:
    """Parse an HTTP-date (RFC 9110 section 5.6.7) into a POSIX timestamp, or ``None``.

    All three formats are accepted (IMF-fixdate, obsolete RFC 850 and asctime); a date without
    a zone is read as GMT, as HTTP-dates always are.
    """
    if not value:
        return None
    try:
        moment = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def format_http_date(timestamp: float) -> str:
    """Format a POSIX timestamp as an IMF-fixdate, e.g. ``Sun, 06 Nov 1994 08:49:37 GMT``."""
    return email.utils.formatdate(timestamp, usegmt=True)


def parse_etags(value: str) -> list[str]:
    """Split an ``If-None-Match``-style list into entity tags, keeping any ``W/`` prefix.

    The commas inside a quoted tag do not split it. ``*`` comes back as the single item ``"*"``.
    """
    tags: list[str] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i] in " \t,":
            i += 1
        start = i
        if value.startswith("W/", i):
            i += 2
        if i < n and value[i] == '"':
            closing = value.find('"', i + 1)
            i = n if closing < 0 else closing + 1
        else:
            while i < n and value[i] not in ",":
                i += 1
        tag = value[start:i].strip()
        if tag:
            tags.append(tag)
    return tags


def opaque_tag(tag: str) -> str:
    """Strip the weakness prefix ``W/`` of an entity tag, leaving its quoted opaque part."""
    tag = tag.strip()
    return tag[2:] if tag.startswith("W/") else tag


def weak_match(tag_a: str, tag_b: str) -> bool:
    """Weak comparison of two entity tags (RFC 9110 section 8.8.3.2): equal opaque parts."""
    return opaque_tag(tag_a) == opaque_tag(tag_b)
