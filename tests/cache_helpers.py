"""Shared by the cache unit tests: a settable clock and a short way to build header fields."""

from __future__ import annotations

from proxy.http11.headers import Headers

T0 = 1_700_000_000.0
"""The moment every cache test starts at (a fixed POSIX time)."""
URL = "http://example.com/a"


class Clock:
    """A clock the test moves by hand: ``clock.now += 30``."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def H(*pairs: tuple[str, str]) -> Headers:
    """Header fields from ``(name, value)`` pairs."""
    return Headers(pairs)
