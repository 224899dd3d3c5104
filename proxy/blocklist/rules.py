"""Pure URL blocklist: ``parse(text)`` gives an immutable :class:`Blocklist`.

Theory of operation
-------------------
The original proxy kept ``blacklist.txt`` as a list of strings and blocked a URL when
one of them occurred *anywhere* in it, so ``x.com`` also blocked ``netflix.com``.
Here every rule is parsed once into a normalised host (lower case, no trailing dot,
IDNA ``xn--`` form) and put into a hash table keyed by that host.  A lookup walks
the suffixes of the request host from the longest (``a.b.example.com``) to the
shortest (``com``) and probes the tables, so it costs O(labels in the host), however
many rules there are; matching only ever compares whole labels.

Rule forms, one per line (``#`` starts a comment at the start of a line or after a
space)::

    example.com            the host and every subdomain
    *.example.com          subdomains only
    =example.com           the exact host only
    .example.com           same as example.com (Squid style)
    example.com/ads/       host + subdomains, path starting with /ads/
    http://example.com/ads same; the scheme is accepted and ignored
    example.com:8080       only requests to port 8080 (a rule without a port
                           matches every port; ``http://h:80`` == ``http://h``)
    10.0.0.1  10.0.0.0/8  ::1  [::1]  ::1/128   literal IP targets only

Paths are compared case-insensitively after removing ``.``/``..`` segments and
decoding %-escapes of unreserved characters.  A prefix ending in ``/ ? & = ;`` is a
plain prefix (``/ads/`` never matches ``/adsense``); any other prefix must be
followed by the end or by one of ``/ ? # ; &`` (``/ads`` matches ``/ads``,
``/ads/x`` and ``/ads?q`` but not ``/adsense``).  A path rule never matches when the
path is unknown (a CONNECT tunnel).  Nothing here does I/O or DNS look-ups.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
_ANY, _SUB, _EXACT = 0, 1, 2
_LABEL = re.compile(r"[a-z0-9_-]{1,63}")
_FAST = re.compile(r"[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*")
_SCHEME = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*)://")
_ESCAPE = re.compile(r"%[0-9a-fA-F]{2}")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_COMMENT = re.compile(r"\s#")
_IPv6 = ipaddress.IPv6Address


NetSpec = tuple[Literal["net"], ipaddress.IPv4Network | ipaddress.IPv6Network]
"""A compiled rule for an address range: ``("net", network)``."""
HostSpec = tuple[Literal["host"], int, str, int | None, str | None]
"""A compiled host rule: ``("host", mode, host, port or None, path prefix or None)``."""
RuleSpec = NetSpec | HostSpec


@dataclass(frozen=True, slots=True)
class Rule:
    """One valid rule: its *text* as written (stripped) and its 1-based *line*."""

    text: str
    line: int


@dataclass(frozen=True, slots=True)
class Match:
    """The answer of :meth:`Blocklist.match`: the *rule* that blocks the request."""

    rule: Rule


@dataclass(frozen=True, slots=True)
class ParseError:
    """An invalid line: its 1-based *line* number, its *text* and a one-line *message*."""

    line: int
    text: str
    message: str


def normalize_host(host: str) -> str:
    """Return *host* lower-cased, without a trailing dot or IPv6 brackets, in IDNA form.

    IP addresses come back in their canonical text (``::1``, ``10.0.0.1``).

    :raises ValueError: if *host* is not a valid host name or IP address.
    """
    h = host.strip()
    if h.startswith("[") and h.endswith("]"):
        return str(_IPv6(h[1:-1]))
    if ":" in h:
        return str(_IPv6(h))
    h = h.lower()
    if h.endswith("."):
        h = h[:-1]
    if not h.isascii():
        try:
            h = h.encode("idna").decode("ascii").lower()
        except UnicodeError as exc:
            raise ValueError(f"invalid international name: {exc}") from None
    if not h:
        raise ValueError("empty host")
    if len(h) > 253:
        raise ValueError("host name longer than 253 characters")
    if h.rpartition(".")[2].isdigit():
        return str(ipaddress.IPv4Address(h))
    if _FAST.fullmatch(h):  # one regex for the whole name; labels only to explain errors
        return h
    for label in h.split("."):
        if not _LABEL.fullmatch(label):
            what = "empty label" if not label else f"invalid label {label!r}"
            raise ValueError(f"{what} in host {h!r}")
    return h


def _is_ipv4(text: str) -> bool:
    """True if *text* is made of digits and dots only (so it must be an IPv4 address)."""
    return text.replace(".", "").isdigit()


def _normalize_path(path: str) -> str:
    """Lower-case *path*, decode unreserved %-escapes and remove dot segments."""
    path = path.partition("#")[0] or "/"
    if "%" in path:
        path = _ESCAPE.sub(lambda m: c if (c := unquote(m[0])) in _UNRESERVED else m[0], path)
    path = path.lower()
    head, q, query = path.partition("?")
    if "/." in head:
        out: list[str] = []
        for seg in head.split("/")[1:]:
            if seg == "..":
                if out:
                    out.pop()
            elif seg != ".":
                out.append(seg)
        end = "/" if head.endswith(("/.", "/..")) else ""
        head = "/" + "/".join(out) + end if out else "/"
    return head + q + query


def _compile(text: str) -> tuple[str, RuleSpec]:
    """Parse one stripped rule: return (canonical text, spec) or raise ValueError.

    spec is ``("net", network)`` or ``("host", mode, host, port, path)``.
    """
    if not text:
        raise ValueError("empty rule")
    if _FAST.fullmatch(text) and not text.rpartition(".")[2].isdigit() and len(text) <= 253:
        return text, ("host", _ANY, text, None, None)  # the common case, kept fast
    if any(c.isspace() for c in text):
        raise ValueError("contains whitespace")
    rest = text
    scheme = None
    if m := _SCHEME.match(rest):
        scheme = m[1].lower()
        if scheme not in DEFAULT_PORTS:
            raise ValueError(f"unsupported scheme {scheme!r} (use http or https)")
        rest = rest[m.end() :]
    mode = _ANY
    if rest.startswith("="):
        mode, rest = _EXACT, rest[1:]
    elif rest.startswith("*."):
        mode, rest = _SUB, rest[2:]
    elif rest.startswith(".") and not rest.startswith(".."):
        rest = rest[1:]
    head, slash, path = rest.partition("/")
    if not scheme and not mode and path.isdigit() and (":" in head or _is_ipv4(head)):
        net = ipaddress.ip_network(head.strip("[]") + "/" + path)  # a CIDR range
        return str(net.network_address if net.num_addresses == 1 else net), ("net", net)
    if "@" in head:
        raise ValueError("user information is not allowed in a rule")
    if head.count(":") > 1 and not head.startswith("["):
        host, port = head, None  # a bare IPv6 address
    else:
        auth = urlsplit("//" + head)
        host, port = auth.hostname or "", auth.port  # port: ValueError if out of range
        if port == 0:
            raise ValueError("port 0 is not a valid port")
        if scheme and port == DEFAULT_PORTS[scheme]:
            port = None
    host = normalize_host(host)
    is_ip = ":" in host or _is_ipv4(host)
    if is_ip and mode != _ANY:
        raise ValueError("'*.' and '=' apply to host names, not IP addresses")
    npath = _normalize_path("/" + path) if slash else None
    if npath == "/":
        npath = None
    if is_ip and port is None and npath is None:
        net = ipaddress.ip_network(host)
        return str(net.network_address), ("net", net)
    if is_ip:  # "http://" keeps 10.0.0.0/8 (a path rule) apart from the CIDR 10.0.0.0/8
        prefix = f"http://[{host}]" if ":" in host else f"http://{host}"
    else:
        prefix = ("=" if mode == _EXACT else "*." if mode == _SUB else "") + host
    canon = prefix + (f":{port}" if port else "") + (npath or "")
    return canon, ("host", _EXACT if is_ip else mode, host, port, npath)


def parse_rule(text: str, line: int = 0) -> Rule:
    """Validate one rule and return it as a :class:`Rule` (text stripped).

    :raises ValueError: with a one-line reason if the rule is invalid.
    """
    _compile(text.strip())
    return Rule(text.strip(), line)


def canonical_rule(text: str) -> str:
    """Return the normalised form of rule *text*; equal forms mean the same rule.

    :raises ValueError: if the rule is invalid.
    """
    return _compile(text.strip())[0]


MAX_MESSAGE = 160
"""Longest ``ParseError.message``: some reasons quote the rule, and a rule can be huge."""


def _strip_comment(line: str) -> str:
    """Remove a whole-line ``#`` comment or a trailing `` #`` comment and blanks."""
    if "#" in line:
        s = line.lstrip()
        if s.startswith("#"):
            return ""
        line = _COMMENT.split(line, maxsplit=1)[0]
    return line.strip()


def _path_matches(path: str, prefix: str) -> bool:
    """True if normalised request *path* starts with rule *prefix* at a boundary."""
    if not path.startswith(prefix):
        return False
    if len(path) == len(prefix) or prefix[-1] in "/?&=;":
        return True
    return path[len(prefix)] in "/?#;&"


class Blocklist:
    """An immutable snapshot of parsed rules with hash indexes for fast matching.

    Build one with :func:`parse`; the proxy swaps whole snapshots, never edits one.

    :ivar rules: the valid rules, in file order.
    :ivar errors: the invalid lines that were skipped.
    """

    __slots__ = ("_canon", "_detail", "_hosts", "_nets", "errors", "rules")

    def __init__(
        self,
        items: Iterable[tuple[Rule, str, RuleSpec]] = (),
        errors: Iterable[ParseError] = (),
    ) -> None:
        """Index already compiled *items*; use :func:`parse` instead of calling this."""
        hosts: tuple[dict[str, Rule], ...] = ({}, {}, {})  # indexed by mode
        detail: dict[str, list[tuple[int, int | None, str | None, Rule]]] = {}
        nets: dict[tuple[int, int], dict[int, Rule]] = {}
        rules, canon = [], []
        for rule, key, spec in items:
            rules.append(rule)
            canon.append(key)
            if len(spec) == 2:
                net = spec[1]
                nets.setdefault((net.version, net.prefixlen), {}).setdefault(
                    int(net.network_address), rule
                )
            elif spec[3] is None and spec[4] is None:
                hosts[spec[1]].setdefault(spec[2], rule)
            else:
                detail.setdefault(spec[2], []).append((spec[1], spec[3], spec[4], rule))
        self.rules: tuple[Rule, ...] = tuple(rules)
        self.errors: tuple[ParseError, ...] = tuple(errors)
        self._canon = tuple(canon)
        self._hosts, self._detail, self._nets = hosts, detail, nets

    def __len__(self) -> int:
        """Return the number of valid rules."""
        return len(self.rules)

    def __repr__(self) -> str:
        """Show the rule and error counts."""
        return f"<Blocklist rules={len(self.rules)} errors={len(self.errors)}>"

    def keys(self) -> frozenset[str]:
        """Return the canonical forms of the rules (see :func:`canonical_rule`)."""
        return frozenset(self._canon)

    def match(
        self, host: str, path: str | None = None, port: int | None = None, scheme: str = "http"
    ) -> Match | None:
        """Return the :class:`Match` of a rule blocking this request, or ``None``.

        :param host: request host name or IP literal, in any case, Unicode or IDNA form.
        :param path: request path (with query), or ``None`` if unknown (CONNECT).
        :param port: request port; ``None`` means the default port of *scheme*.
        :param scheme: ``"http"`` or ``"https"``, only used for the default port.
        :raises ValueError: if *host* is not a valid host name.
        """
        if not self.rules:
            return None  # no list at all: no host parsing on every request
        h = normalize_host(host)
        if port is None:
            port = DEFAULT_PORTS.get(scheme.lower())
        npath = None if path is None else _normalize_path(path)
        if ":" in h or _is_ipv4(h):
            return self._match_ip(h, npath, port)
        any_, sub, exact = self._hosts
        detail = self._detail
        start = 0
        while True:
            suffix = h[start:] if start else h
            rule = any_.get(suffix) or (sub.get(suffix) if start else exact.get(suffix))
            if rule is not None:
                return Match(rule)
            if detail and suffix in detail:
                skip = _EXACT if start else _SUB
                for mode, rport, prefix, rule in detail[suffix]:
                    if mode == skip or (rport is not None and rport != port):
                        continue
                    if prefix is None or (npath is not None and _path_matches(npath, prefix)):
                        return Match(rule)
            start = h.find(".", start) + 1
            if not start:
                return None

    def _match_ip(self, h: str, npath: str | None, port: int | None) -> Match | None:
        """Match a literal IP target against address, CIDR and IP path/port rules."""
        addr = ipaddress.ip_address(h)
        candidates = [addr]
        if isinstance(addr, _IPv6) and addr.ipv4_mapped is not None:
            candidates.append(addr.ipv4_mapped)
        for a in candidates:
            value, bits = int(a), a.max_prefixlen
            for (version, plen), table in self._nets.items():
                if version == a.version:
                    rule = table.get(value >> (bits - plen) << (bits - plen))
                    if rule is not None:
                        return Match(rule)
            for _mode, rport, prefix, rule in self._detail.get(str(a), ()):
                if rport is not None and rport != port:
                    continue
                if prefix is None or (npath is not None and _path_matches(npath, prefix)):
                    return Match(rule)
        return None

    def match_url(self, url: str) -> Match | None:
        """Match an absolute URL (``http://h:p/path``) or an authority (``h:443``).

        An authority (CONNECT target) has no path, so path rules do not apply; text
        with a ``/`` but no scheme is read as an ``http://`` URL.

        :raises ValueError: if the URL or its host is invalid.
        """
        url = url.strip()
        if "://" not in url:
            if "/" not in url:
                parts = urlsplit("//" + url)
                return self.match(_host_of(parts.netloc), None, parts.port, "https")
            url = "http://" + url
        parts = urlsplit(url)
        path = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        return self.match(_host_of(parts.netloc), path, parts.port, parts.scheme)


def _host_of(netloc: str) -> str:
    """Return the host part of *netloc* (no user information or port), keeping case."""
    hostport = netloc.rpartition("@")[2]
    if hostport.startswith("["):
        return hostport[: hostport.find("]") + 1]
    return hostport.rpartition(":")[0] if ":" in hostport else hostport


def parse(text: str) -> Blocklist:
    """Parse the blocklist *text*; invalid lines are skipped and listed in ``errors``.

    Each :class:`ParseError` keeps its line whole, and a message of at most
    ``MAX_MESSAGE`` characters (quote the line with :func:`proxy.blocklist.watch.excerpt`).
    """
    items: list[tuple[Rule, str, RuleSpec]] = []
    errors: list[ParseError] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = _strip_comment(raw)
        if not line:
            continue
        try:
            key, spec = _compile(line)
        except ValueError as exc:
            message = (str(exc) or "invalid rule").splitlines()[0]
            if len(message) > MAX_MESSAGE:
                message = message[: MAX_MESSAGE - 3] + "..."
            errors.append(ParseError(number, line, message))
            continue
        items.append((Rule(line, number), key, spec))
    return Blocklist(items, errors)


EMPTY: Blocklist = parse("")
"""The blocklist with no rules: nothing is blocked."""
