"""The exercise registry, the verdicts, and the one function a check cell calls.

Theory of operation
-------------------
An exercise is a pair of notebook cells. The **exercise cell** (tagged ``exercise``, with
``metadata.exercise`` holding its id, e.g. ``"03-every"``) ships as a stub: a function that
raises :class:`NotImplementedError`, or a variable set to ``...`` (the marked blank). The
**check cell** that follows it is always the same two lines::

    from course import check
    check("03-every", globals())

:func:`check` hands the notebook's namespace to the exercise's checker, a function registered
here with :func:`exercise` (one module per notebook: ``course/rung01.py`` ...). The checker
reads the student's names through :class:`Answer`, runs them against real sockets and reactors,
and returns one sentence saying what it verified. Three verdicts come out:

* ``pass``: the checker returned;
* ``todo``: the answer is still the stub. Anything that raises :class:`NotDone` or
  :class:`NotImplementedError` (a blank left as ``...``, a missing name, the stub's ``raise``)
  lands here, so a shipped notebook reports "not done yet" and never a failure;
* ``fail``: the answer runs and is wrong (:class:`Wrong`, with a hint), or it raised.

:func:`check` never raises: a notebook with unfinished exercises still runs top to bottom.
It prints the verdict for the student and, when the environment variable ``COURSE_RESULTS``
names a file, appends the verdict to it as one JSON line. That file is how
``notebooks/grade.py`` learns the results without reading any prose.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

Status = Literal["pass", "todo", "fail"]
Kind = Literal["predict", "implement", "measure", "design"]

RESULTS_ENV = "COURSE_RESULTS"
"""The environment variable naming the JSON-lines file that :func:`check` appends to."""

_COURSE_DIR = str(Path(__file__).resolve().parent)


class NotDone(Exception):
    """The answer is still the shipped stub: a blank, a missing name, a stub function."""


class Wrong(Exception):
    """The answer runs but is wrong: *message* says what is wrong, *hint* where to look."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


@dataclass(frozen=True)
class Result:
    """The verdict of one check."""

    exercise: str
    status: Status
    message: str
    hint: str = ""
    seconds: float = 0.0

    def render(self) -> str:
        """The verdict as the student reads it under the check cell."""
        label = {"pass": "PASS", "todo": "NOT DONE", "fail": "FAIL"}[self.status]
        text = f"[{label}] {self.exercise}: {self.message}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


Checker = Callable[["Answer"], str]


@dataclass(frozen=True)
class Exercise:
    """One registered exercise: its id, what it asks, and its checker."""

    id: str
    title: str
    kind: Kind
    core: bool
    checker: Checker

    @property
    def notebook(self) -> str:
        """The two-digit number of the notebook the exercise belongs to (``"03"``)."""
        return self.id.split("-", 1)[0]


EXERCISES: dict[str, Exercise] = {}
"""Every exercise by id, filled in as the ``course.rungNN`` modules are imported."""


def exercise(
    exercise_id: str, title: str, *, kind: Kind, core: bool = True
) -> Callable[[Checker], Checker]:
    """Register the decorated function as the checker of *exercise_id*."""

    def register(checker: Checker) -> Checker:
        if exercise_id in EXERCISES:
            raise ValueError(f"exercise {exercise_id!r} is registered twice")
        EXERCISES[exercise_id] = Exercise(exercise_id, title, kind, core, checker)
        return checker

    return register


def _holds_blank(value: Any) -> bool:
    if value is Ellipsis:
        return True
    if isinstance(value, list | tuple | set | frozenset):
        return any(_holds_blank(item) for item in value)
    if isinstance(value, dict):
        return any(_holds_blank(item) for item in value.values())
    return False


class Answer:
    """The student's names, read from the notebook's namespace by a checker."""

    def __init__(self, namespace: Mapping[str, Any]) -> None:
        self._namespace = namespace

    def value(self, name: str) -> Any:
        """The value of *name*; :class:`NotDone` if it is missing or still holds ``...``."""
        if name not in self._namespace:
            raise NotDone(f"`{name}` is not defined yet: run the exercise cell above first")
        value = self._namespace[name]
        if _holds_blank(value):
            raise NotDone(f"`{name}` still holds a blank (`...`): replace it with your answer")
        return value

    def number(self, name: str) -> float:
        """The value of *name*, which must be an int or a float."""
        value = self.value(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Wrong(f"`{name}` should be a number, not {value!r}")
        return float(value)

    def function(self, name: str) -> Callable[..., Any]:
        """The function (or class) called *name*."""
        value = self.value(name)
        if not callable(value):
            raise Wrong(f"`{name}` should be a function or a class, not {type(value).__name__}")
        return value  # type: ignore[no-any-return]


def raised(exc: BaseException) -> str:
    """``"ValueError: why (line N of your code: `...`)"``, naming the student's innermost line."""
    text = f"{type(exc).__name__}: {exc}"
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith(_COURSE_DIR)
    ]
    if frames:
        line = (frames[-1].line or "").strip()
        text += f" (line {frames[-1].lineno} of your code" + (f": `{line}`)" if line else ")")
    return text


def run(exercise_id: str, namespace: Mapping[str, Any]) -> Result:
    """Check *exercise_id* against *namespace* and return the verdict; never raises."""
    started = time.monotonic()

    def verdict(status: Status, message: str, hint: str = "") -> Result:
        return Result(exercise_id, status, message, hint, round(time.monotonic() - started, 3))

    registered = EXERCISES.get(exercise_id)
    if registered is None:
        return verdict("fail", "no such exercise (is the id in the check cell right?)")
    try:
        message = registered.checker(Answer(namespace))
    except NotDone as exc:
        return verdict("todo", f"not done yet: {exc}")
    except NotImplementedError:
        return verdict(
            "todo",
            "not done yet: the stub still raises NotImplementedError; complete the exercise "
            "cell, run it, then run this cell again",
        )
    except Wrong as exc:
        return verdict("fail", exc.message, exc.hint)
    except Exception as exc:  # the student's code raised: report it, keep the notebook going
        return verdict("fail", f"your code raised {raised(exc)}")
    return verdict("pass", message)


def record(result: Result) -> None:
    """Append *result* as one JSON line to the file named by ``$COURSE_RESULTS``, if set."""
    path = os.environ.get(RESULTS_ENV)
    if not path:
        return
    with open(path, "a", encoding="utf-8") as results:
        results.write(json.dumps(asdict(result)) + "\n")


def check(exercise_id: str, namespace: Mapping[str, Any]) -> None:
    """Run the check of *exercise_id*, print the verdict, and record it for the grader."""
    result = run(exercise_id, namespace)
    print(result.render())
    record(result)
