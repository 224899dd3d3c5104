"""Basic proxy authentication (RFC 9110 section 11, RFC 7617) from a file of salted hashes.

Theory of operation
-------------------
With ``--auth-file`` every request, ``CONNECT`` included, must carry
``Proxy-Authorization: Basic base64(user:password)``; without it, or with a wrong one, the proxy
answers ``407`` with ``Proxy-Authenticate: Basic realm="minireactor proxy"`` (RFC 9110 sections
11.7.1 and 15.5.8). The field is hop-by-hop (:data:`proxy.target.HOP_BY_HOP`), so the password
never travels past us.

The file holds one ``user:hash`` line per user; blank lines and ``#`` comments are skipped. A
hash is ``pbkdf2_sha256$<iterations>$<salt, base64>$<derived key, base64>``, the shape Django
uses; make one with ``python -m proxy.auth hash USER`` or :func:`make_entry`. Keys are compared
with :func:`hmac.compare_digest`, and an unknown user costs a hash too, so timing tells nothing
about which names exist.

A slow hash is the point of the format, and also a hazard here: it runs on the reactor thread,
and 50 ms per attempt is 50 ms every other client waits. So hashing is rationed, and rationed
so that whoever floods pays, not the people queueing behind them:

* **Verdict caches.** A verdict is remembered per header value (keyed by its SHA-256, never
  the cleartext), so a client sending the same credentials on every request pays once. Good
  and bad verdicts live in separate caches: a flood of wrong passwords evicts only other
  wrong passwords, never the cached right one of a user already in.
* **A budget per client address.** Each address (an IPv6 client: its ``/64``, which one
  host usually holds whole) may spend ``Authenticator.client_budget`` seconds of
  hashing per second of wall clock. Beyond it, its unknown credentials get a 407 without
  being hashed. The account is kept as a debt that drains at that rate, so a flooding client
  is slowed to the rate and no further, and is forgiven as soon as it stops.
* **A budget per user name**, ``Authenticator.user_budget``, for guesses at one account
  from many addresses. It binds only clients that failed in the last
  :data:`FAILURE_MEMORY` seconds: a genuine first login from a clean address is not slowed
  by somebody else guessing the same user's password.
* **A budget for everyone**, :attr:`Authenticator.budget` seconds per second, the loop's
  own protection. Clients with a recent failure may use it up to one second's worth; clean
  clients up to twice that. So clients already caught guessing, from however many
  addresses, leave room for a genuine newcomer, and the loop never spends more than about
  ``2 * budget`` of its time hashing, whatever arrives. (An attacker who uses each of many
  addresses only once looks clean every time: the shared budget is then all that bounds
  them, and once it is spent a newcomer's correct password gets ``407`` unhashed, like
  theirs. Failures are remembered for the last :data:`MAX_TRACKED` keys, so more addresses
  than that, easy within one IPv6 /48, defeat the per-client memory. ``--allow`` keeps the
  address space small.)

The caller passes the client's address: ``refusal(request.headers, client=peer_ip)``.
Without it every request counts as one anonymous client, which is the old, shared budget.

Basic sends the password in clear text: use it on a trusted network or a loopback tunnel.
"""

from __future__ import annotations

import base64
import binascii
import collections
import getpass
import hashlib
import hmac
import ipaddress
import os
import sys
import time
from collections.abc import Callable
from typing import TypeVar

from .http11 import Headers

SCHEME = "pbkdf2_sha256"
ITERATIONS = 200_000
"""Default PBKDF2 rounds: about 50 ms on a 2020s CPU (OWASP suggests more for web logins)."""
REALM = "minireactor proxy"
CHALLENGE = f'Basic realm="{REALM}"'
_V = TypeVar("_V")
CACHE_SIZE = 1024
"""Verdicts remembered, each of the good and the bad cache."""
FAILURE_MEMORY = 60.0
"""Seconds a wrong password marks its client as guessing (bound by the per-user budget)."""
MAX_TRACKED = 4096
"""Client addresses and user names whose hashing debt is kept (least recently seen dropped)."""
ANONYMOUS = "-"
"""The client key of calls that name no client address."""


class AuthFileError(ValueError):
    """The auth file is malformed; the message names the line."""


def make_entry(user: str, password: str, *, iterations: int = ITERATIONS) -> str:
    """Return one auth-file line, ``user:pbkdf2_sha256$iterations$salt$hash``, for *password*."""
    if not user or ":" in user or any(ord(ch) < 33 for ch in user):
        raise ValueError(f"a user name must be non-empty, without ':' or blanks: {user!r}")
    salt = os.urandom(16)
    key = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    b64 = base64.b64encode
    return f"{user}:{SCHEME}${iterations}${b64(salt).decode()}${b64(key).decode()}"


def _parse_hash(text: str) -> tuple[int, bytes, bytes]:
    scheme, iterations, salt, key = text.split("$")
    if scheme != SCHEME:
        raise ValueError(f"unknown scheme {scheme!r} (expected {SCHEME})")
    rounds = int(iterations)
    if not 1_000 <= rounds <= 10_000_000:
        raise ValueError("iterations must be between 1000 and 10000000")
    return rounds, base64.b64decode(salt, validate=True), base64.b64decode(key, validate=True)


def parse_entries(text: str) -> dict[str, tuple[int, bytes, bytes]]:
    """Parse auth-file *text* into ``{user: (iterations, salt, key)}``; raise AuthFileError."""
    entries: dict[str, tuple[int, bytes, bytes]] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        try:
            if not sep or not user:
                raise ValueError("expected 'user:hash'")
            if user in entries:
                raise ValueError(f"user {user!r} appears twice")
            entries[user] = _parse_hash(hashed)
        except (ValueError, binascii.Error) as exc:
            raise AuthFileError(f"line {number}: {exc}") from None
    if not entries:
        raise AuthFileError("no users: every request would be refused")
    return entries


def load(path: str) -> Authenticator:
    """Read the auth file at *path* (a blocking read: call it at start-up, not on the loop)."""
    with open(path, encoding="utf-8") as handle:
        return Authenticator(parse_entries(handle.read()))


def decode_basic(value: str | None) -> tuple[str, str] | None:
    """Split a ``Basic`` credentials value into ``(user, password)``, or None if malformed."""
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class _Debts:
    """Seconds of hashing owed per key, each draining at *rate* seconds per second.

    A key may hash while its debt is below *limit*; the cost of each hash is added after it
    ran. Only :data:`MAX_TRACKED` keys are kept: a forgotten key starts afresh, which bounds
    memory whatever the number of addresses, while the shared budget still bounds the loop.
    """

    __slots__ = ("rate", "_entries")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        # key -> [debt in seconds, when it was last brought up to date, last failure]
        self._entries: collections.OrderedDict[str, list[float]] = collections.OrderedDict()

    def _entry(self, key: str, now: float) -> list[float]:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = [0.0, now, -FAILURE_MEMORY - 1.0]
            if len(self._entries) > MAX_TRACKED:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
            entry[0] = max(0.0, entry[0] - self.rate * (now - entry[1]))
            entry[1] = now
        return entry

    def debt(self, key: str, now: float) -> float:
        return self._entry(key, now)[0]

    def charge(self, key: str, now: float, seconds: float) -> None:
        self._entry(key, now)[0] += seconds

    def failed(self, key: str, now: float) -> None:
        self._entry(key, now)[2] = now

    def failed_recently(self, key: str, now: float) -> bool:
        entry = self._entries.get(key)
        return entry is not None and now - entry[2] < FAILURE_MEMORY


def client_key(address: str | None) -> str:
    """The budget key of a client address: the address, an IPv6 one's ``/64`` network."""
    if not address:
        return ANONYMOUS
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class Authenticator:
    """Checks ``Proxy-Authorization`` against the users of an auth file.

    :param budget: seconds of hashing per second for everyone together (see the module).
    :param client_budget: seconds of hashing per second for one client address.
    :param user_budget: seconds of hashing per second spent on one user name by clients
        that failed recently.
    :param clock: monotonic seconds, for the budgets (the cost of a hash is measured with
        :func:`time.perf_counter`).
    """

    def __init__(
        self,
        entries: dict[str, tuple[int, bytes, bytes]],
        *,
        budget: float = 0.5,
        client_budget: float = 0.1,
        user_budget: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.entries = entries
        self.budget = budget
        self.client_budget = client_budget
        self.user_budget = user_budget
        self.clock = clock
        self._good: collections.OrderedDict[bytes, str] = collections.OrderedDict()
        self._bad: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._everyone = _Debts(budget)
        self._clients = _Debts(client_budget)
        self._users = _Debts(user_budget)
        # Unknown users are hashed against this, so they take as long as known ones.
        self._dummy = (max(e[0] for e in entries.values()), b"\0" * 16, b"\0" * 32)
        self.hashes = 0
        self.throttled = 0

    def __len__(self) -> int:
        return len(self.entries)

    def user_for(
        self, headers: Headers, client: str | None = None, field: str = "proxy-authorization"
    ) -> str | None:
        """The authenticated user named by *headers*' ``Proxy-Authorization``, or None.

        :param client: the client's IP address (the transport's peer address without its
            port), whose hashing budget pays for a look-up the caches cannot answer.
        :param field: the field to read: ``authorization`` for a request sent to the proxy
            as an origin (its own pages, scraped or opened in a browser directly).
        """
        value = headers.get(field)
        if value is None:
            return None
        digest = hashlib.sha256(value.encode("latin-1")).digest()
        user = self._good.get(digest)
        if user is not None:
            self._good.move_to_end(digest)
            return user
        if digest in self._bad:
            self._bad.move_to_end(digest)
            return None
        credentials = decode_basic(value)
        if credentials is None:
            return None
        key, name = client_key(client), credentials[0]
        now = self.clock()
        if not self._may_hash(key, name, now):
            self.throttled += 1
            return None
        started = time.perf_counter()
        user = self._verify(*credentials)
        cost = time.perf_counter() - started
        for debts, debtor in ((self._everyone, ""), (self._clients, key), (self._users, name)):
            debts.charge(debtor, now, cost)
        if user is not None:
            self._remember(self._good, digest, user)
        else:
            self._remember(self._bad, digest, None)
            self._clients.failed(key, now)
        return user

    def _may_hash(self, key: str, name: str, now: float) -> bool:
        if self._clients.debt(key, now) >= self.client_budget:
            return False
        if self._clients.failed_recently(key, now):
            # A client that is guessing: its user name's budget binds, and it gets no more
            # than one second's worth of everyone's.
            if self._users.debt(name, now) >= self.user_budget:
                return False
            return self._everyone.debt("", now) < self.budget
        return self._everyone.debt("", now) < 2 * self.budget

    @staticmethod
    def _remember(cache: collections.OrderedDict[bytes, _V], digest: bytes, verdict: _V) -> None:
        cache[digest] = verdict
        if len(cache) > CACHE_SIZE:
            cache.popitem(last=False)

    def _verify(self, user: str, password: str) -> str | None:
        self.hashes += 1
        known = user in self.entries
        iterations, salt, key = self.entries[user] if known else self._dummy
        derived = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
        return user if hmac.compare_digest(derived, key) and known else None

    def refusal(
        self, headers: Headers, client: str | None = None
    ) -> tuple[int, str, Headers] | None:
        """``(407, detail, challenge headers)`` unless *headers* authenticate a user.

        :param client: the client's IP address, as for :meth:`user_for`.
        """
        if self.user_for(headers, client) is not None:
            return None
        given = "proxy-authorization" in headers
        detail = "wrong proxy credentials" if given else "this proxy requires authentication"
        return 407, detail, Headers([("Proxy-Authenticate", CHALLENGE)])


def main(argv: list[str] | None = None) -> int:
    """``python -m proxy.auth hash USER``: print an auth-file line (password from the tty/stdin)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "hash":
        print("usage: python -m proxy.auth hash USER  >> auth.txt", file=sys.stderr)
        return 2
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args[1]}: ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    try:
        print(make_entry(args[1], password))
    except ValueError as exc:
        print(f"proxy.auth: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
