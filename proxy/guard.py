"""One client's bug stays one client's problem.

Theory of operation
-------------------
The reactor already survives a callback that raises (it logs and moves on), but that leaves the
client whose callback failed waiting for an answer that will never come. Callbacks that reach a
session from outside its own transport (timers, the resolver, a connect attempt, the origin
connection) are therefore wrapped by :func:`guarded`, which turns an unexpected exception into
:meth:`proxy.session.ClientSession.internal_error`: a 500 if the response has not begun, a reset
if it has, and a logged traceback either way. DESIGN rule 3 asks exactly this of an illegal state
transition, which surfaces as an exception like any other bug.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def guarded(method: F) -> F:
    """Turn an exception in a session callback into a 500 (or reset) for that client only.

    Works on methods of the session itself and of objects that carry a ``session`` attribute
    (an exchange, a dialer).
    """

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any) -> Any:
        try:
            return method(self, *args)
        except Exception as exc:
            session = getattr(self, "session", self)
            session.internal_error(exc)
            return None

    return wrapper  # type: ignore[return-value]
