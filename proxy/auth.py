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
and 40 ms per attempt is 40 ms every other client waits. Two things keep it off the hot path:

* **A verdict cache.** The verdict for a given header value is remembered (keyed by its SHA-256,
  never the cleartext), so a client sending the same credentials on every request pays once.
* **A hashing budget.** At most :attr:`Authenticator.budget` seconds of hashing per second of
  wall clock; beyond that, unknown credentials get a 407 without being hashed. A flood of wrong
  passwords then costs the loop a bounded fraction of its time, at worst delaying a genuine
  newcomer's first request, never stalling everyone.

Basic sends the password in clear text: use it on a trusted network or a loopback tunnel.
"""

from __future__ import annotations

import base64
import binascii
import collections
import getpass
import hashlib
import hmac
import os
import sys
import time
from collections.abc import Callable

from .http11 import Headers

SCHEME = "pbkdf2_sha256"
ITERATIONS = 200_000
"""Default PBKDF2 rounds: about 50 ms on a 2020s CPU (OWASP suggests more for web logins)."""
REALM = "minireactor proxy"
CHALLENGE = f'Basic realm="{REALM}"'
CACHE_SIZE = 1024


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


class Authenticator:
    """Checks ``Proxy-Authorization`` against the users of an auth file."""

    def __init__(
        self,
        entries: dict[str, tuple[int, bytes, bytes]],
        *,
        budget: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.entries = entries
        self.budget = budget
        self.clock = clock
        self._verdicts: collections.OrderedDict[bytes, str | None] = collections.OrderedDict()
        self._window = -1.0
        self._spent = 0.0
        # Unknown users are hashed against this, so they take as long as known ones.
        self._dummy = (max(e[0] for e in entries.values()), b"\0" * 16, b"\0" * 32)
        self.hashes = 0
        self.throttled = 0

    def __len__(self) -> int:
        return len(self.entries)

    def user_for(self, headers: Headers) -> str | None:
        """The authenticated user named by *headers*' ``Proxy-Authorization``, or None."""
        value = headers.get("proxy-authorization")
        if value is None:
            return None
        digest = hashlib.sha256(value.encode("latin-1")).digest()
        if digest in self._verdicts:
            self._verdicts.move_to_end(digest)
            return self._verdicts[digest]
        credentials = decode_basic(value)
        if credentials is None:
            return None
        if not self._may_hash():
            self.throttled += 1
            return None
        started = time.perf_counter()
        user = self._verify(*credentials)
        self._spent += time.perf_counter() - started
        self._verdicts[digest] = user
        if len(self._verdicts) > CACHE_SIZE:
            self._verdicts.popitem(last=False)
        return user

    def _may_hash(self) -> bool:
        now = self.clock()
        if now - self._window >= 1.0:
            self._window, self._spent = now, 0.0
        return self._spent < self.budget

    def _verify(self, user: str, password: str) -> str | None:
        self.hashes += 1
        known = user in self.entries
        iterations, salt, key = self.entries[user] if known else self._dummy
        derived = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
        return user if hmac.compare_digest(derived, key) and known else None

    def refusal(self, headers: Headers) -> tuple[int, str, Headers] | None:
        """``(407, detail, challenge headers)`` unless *headers* authenticate a user."""
        if self.user_for(headers) is not None:
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
