"""The proxy lab's checks: what the driver runs, each worth points, each PASS or FAIL.

Theory of operation
-------------------
A check is a function of a :class:`Context` (where the proxy listens, the loopback origins,
curl, the CA) that returns a one-line detail when the proxy behaved, and raises
:class:`CheckFailed` with the reason when it did not. :func:`check` registers it under an id
(``A1`` ... ``C8``, the letter is its part) with its points and a title, in the order the
handout lists them; ``checks.part_a``, ``part_b`` and ``part_c`` hold them.

A check earns all its points or none; partial credit comes from the number of checks in a
part. Every wait inside a check has a timeout, so a proxy that hangs costs a FAIL, never a
hung driver.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from checks.origins import Origins

PARTS = {"A": "HTTP relay", "B": "CONNECT tunnels", "C": "Cache"}
"""The parts of the lab, by letter."""


class CheckFailed(Exception):
    """The proxy did not do what a check expects; the message says what it did instead."""


@dataclass(frozen=True)
class Context:
    """What a check may use."""

    #: Where the proxy under test listens.
    proxy: tuple[str, int]
    #: Its process id, to read its memory use and open descriptors from /proc.
    pid: int
    #: The loopback origins (HTTP, HTTPS, raw TCP).
    origins: Origins
    #: The curl program.
    curl: str
    #: The PEM file of the CA that signed the HTTPS origin's certificate.
    ca_pem: Path
    #: A scratch directory for this run.
    workdir: Path
    #: The proxy's ``--timeout`` (connect, then first byte).
    timeout: float
    #: The proxy's ``--cache-bytes``.
    cache_bytes: int

    @property
    def proxy_url(self) -> str:
        """``http://host:port`` of the proxy, for curl's ``--proxy``."""
        host, port = self.proxy
        return f"http://{host}:{port}"


CheckFunction = Callable[[Context], str]


@dataclass(frozen=True)
class Check:
    """One graded behaviour."""

    id: str
    points: int
    title: str
    run: CheckFunction

    @property
    def part(self) -> str:
        """The part's letter, the first character of the id."""
        return self.id[0]


CHECKS: list[Check] = []
"""Every registered check, in handout order."""


def check(check_id: str, points: int, title: str) -> Callable[[CheckFunction], CheckFunction]:
    """Register the decorated function as check *check_id*, worth *points*."""

    def register(function: CheckFunction) -> CheckFunction:
        if any(existing.id == check_id for existing in CHECKS):
            raise ValueError(f"check {check_id} is registered twice")
        CHECKS.append(Check(check_id, points, title, function))
        return function

    return register


def expect(condition: bool, reason: str) -> None:
    """Raise :class:`CheckFailed` with *reason* unless *condition* holds."""
    if not condition:
        raise CheckFailed(reason)


def fail_if(problems: list[str]) -> None:
    """Fail with the problems found, if any (the first three, and how many more)."""
    if len(problems) > 3:
        problems = [*problems[:3], f"and {len(problems) - 3} more"]
    if problems:
        raise CheckFailed("; ".join(problems))


def all_checks() -> list[Check]:
    """Every check of every part (importing the part modules registers them)."""
    from checks import part_a, part_b, part_c  # noqa: F401  (imported for their checks)

    return list(CHECKS)
