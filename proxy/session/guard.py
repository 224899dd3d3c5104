"""One client's bug stays one client's problem.

Theory of operation
-------------------
The reactor already survives a callback that raises (it logs and moves on), but that leaves the
client whose callback failed waiting for an answer that will never come. Callbacks that reach a
session from outside its own transport (timers, the resolver, a connect attempt, the origin
connection, the cache's wake-ups) are therefore wrapped by :func:`guarded`, which turns an
unexpected exception into the object's ``internal_error``: the session answers a 500 if the
response has not begun, resets the connection if it has, and logs the traceback either way. An
illegal state transition surfaces exactly like this, as an exception like any other bug.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Concatenate, ParamSpec, Protocol, TypeVar


class FailureSink(Protocol):
    """Anything that knows what to do when one of its callbacks raises."""

    def internal_error(self, exc: BaseException) -> None:
        """A bug surfaced in a callback of this object."""
        ...


Owner = TypeVar("Owner", bound=FailureSink)
Params = ParamSpec("Params")


def guarded(
    method: Callable[Concatenate[Owner, Params], None],
) -> Callable[Concatenate[Owner, Params], None]:
    """Wrap a callback method so an exception becomes ``self.internal_error(exc)``."""

    @functools.wraps(method)
    def wrapper(self: Owner, /, *args: Params.args, **kwargs: Params.kwargs) -> None:
        try:
            method(self, *args, **kwargs)
        except Exception as exc:
            self.internal_error(exc)

    return wrapper
