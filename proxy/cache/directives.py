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
* HTTP-dates (RFC 9110 section 5.6.7) come in exactly three formats: the IMF-fixdate
  ``Sun, 06 Nov 1994 08:49:37 GMT``, the obsolete RFC 850 form ``Sunday, 06-Nov-94 08:49:37
  GMT`` and C's asctime ``Sun Nov  6 08:49:37 1994``. The grammar is case-sensitive and fixes
  every space, comma and digit count, so each format is one anchored regular expression and
  anything else (another zone such as ``UTC``, a two-digit year outside RFC 850, a missing
  comma, doubled spaces, ``0``) is *invalid*. ``email.utils`` is deliberately not used: it
  reads mail dates and accepts most of those mistakes. An invalid date gives ``None`` and the
  caller decides what that means (an invalid ``Expires`` means "already expired", RFC 9111
  section 5.3).
* Entity tags (RFC 9110 section 8.8.3) are opaque quoted strings, optionally prefixed by ``W/``
  for weak ones. Caches compare them with the *weak comparison* (section 8.8.3.2): two tags match
  when their opaque parts are equal, whatever their weakness.
"""

from __future__ import annotations

import calendar
import email.utils
import re
import time
from collections.abc import Iterable

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
    if len(argument) > len(str(DELTA_SECONDS_MAX)):
        # Larger than we represent: section 1.2.2 says use 2147483648. Also keeps int() off
        # strings over 4,300 digits, where Python raises instead of converting.
        return DELTA_SECONDS_MAX
    return min(int(argument), DELTA_SECONDS_MAX)


_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTHS = {name: number for number, name in enumerate(_MONTH_NAMES, start=1)}
_DAY = "(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_LONG_DAY = "(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_MONTH = "(?P<month>" + "|".join(_MONTH_NAMES) + ")"
_TIME = r"(?P<hour>\d\d):(?P<minute>\d\d):(?P<second>\d\d)"
# re.ASCII: \d must mean 0-9 only, not every Unicode digit.
_IMF_FIXDATE = re.compile(
    rf"{_DAY}, (?P<day>\d\d) {_MONTH} (?P<year>\d{{4}}) {_TIME} GMT", re.ASCII
)
_RFC850_DATE = re.compile(
    rf"{_LONG_DAY}, (?P<day>\d\d)-{_MONTH}-(?P<year>\d\d) {_TIME} GMT", re.ASCII
)
_ASCTIME_DATE = re.compile(
    rf"{_DAY} {_MONTH} (?P<day>\d\d| \d) {_TIME} (?P<year>\d{{4}})", re.ASCII
)


def parse_http_date(value: str | None, now: float | None = None) -> float | None:
    """Parse an HTTP-date (RFC 9110 section 5.6.7) into a POSIX timestamp, or ``None``.

    Only the three formats of the grammar are accepted, case-sensitively: IMF-fixdate,
    obsolete RFC 850 and asctime. A two-digit RFC 850 year that would be more than 50 years
    after *now* (default: the current time) is read as the latest past year with the same
    last two digits, as section 5.6.7 requires. Impossible dates (``31 Feb``, hour ``24``)
    are invalid too. ``second`` may be ``60``, a leap second.

    >>> parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT")
    784111777.0
    >>> parse_http_date("Sun, 06 Nov 1994 08:49:37 UTC") is None
    True
    """
    if not value:
        return None
    text = value.strip(" \t")
    for pattern in (_IMF_FIXDATE, _RFC850_DATE, _ASCTIME_DATE):
        found = pattern.fullmatch(text)
        if found is not None:
            break
    else:
        return None
    year = int(found["year"])
    if pattern is _RFC850_DATE:
        this_year = time.gmtime(time.time() if now is None else now).tm_year
        year += this_year - this_year % 100
        if year > this_year + 50:
            year -= 100
    month = _MONTHS[found["month"]]
    day = int(found["day"])
    hour, minute, second = int(found["hour"]), int(found["minute"]), int(found["second"])
    if year < 1 or hour > 23 or minute > 59 or second > 60:
        return None
    if not 1 <= day <= calendar.monthrange(year, month)[1]:
        return None
    return float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))


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
