"""The course's self-checks: one checker per exercise of the notebooks.

Theory of operation
-------------------
The notebooks run with their own folder as the working directory, so ``from course import
check`` finds this package next to them (``notebooks/grade.py`` and ``tests/test_course.py``
put ``notebooks/`` on the path themselves). Importing the package imports one module per
notebook, ``course.rungNN``, and each registers its checkers in
:data:`course.checks.EXERCISES` with the :func:`course.checks.exercise` decorator; see
:mod:`course.checks` for the verdicts and how the grader collects them, and
:mod:`course.harness` for how a checker survives unfinished code.

To give a notebook exercises, write ``course/rungNN.py`` and add it to the imports below.
"""

from . import rung01, rung02, rung03, rung04, rung05, rung06, rung07, rung08, rung09, rung10, rung11
from .checks import EXERCISES, Answer, NotDone, Result, Wrong, check, exercise, run

__all__ = [
    "EXERCISES",
    "Answer",
    "NotDone",
    "Result",
    "Wrong",
    "check",
    "exercise",
    "rung01",
    "rung02",
    "rung03",
    "rung04",
    "rung05",
    "rung06",
    "rung07",
    "rung08",
    "rung09",
    "rung10",
    "rung11",
    "run",
]
