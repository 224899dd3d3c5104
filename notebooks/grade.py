"""Grade the course's notebooks: execute them and report each exercise's check.

Theory of operation
-------------------
An exercise is a code cell tagged ``exercise`` whose ``metadata.exercise`` holds its id,
followed by a check cell that calls ``course.check(id, globals())`` (see
``notebooks/course/checks.py``). The grader executes whole notebooks with ``nbclient`` in a
fresh kernel, with the notebook's own folder as the working directory, exactly as ``nbmake``
does in CI, so the checks run the student's code where it was written. It never reads the
printed verdicts: it points ``$COURSE_RESULTS`` at a temporary file, and every check appends its
verdict there as one JSON line. An exercise with no line in that file did not get checked (an
earlier cell failed to define something, or the kernel died), and is reported as such. Which
exercises to expect comes from the registry and the shipped notebook of the same number, not
from the submission's tags: an exercise whose cells were deleted or untagged is reported
``missing`` (not passed), so a notebook with every exercise deleted does not pass, and a check
that ran under an answer written in a new, untagged cell still counts.

The kernel finds ``course`` (and ``minireactor``, ``proxy``, and ``tests/support.py`` for
notebook 07) on a ``PYTHONPATH`` that starts with this checkout's folders, so the checks applied
are the instructor's copy, not whatever a submission folder holds. Cells may fail
(``allow_errors``): a broken cell costs the exercises that depend on it, not the whole notebook,
and every error is listed.

Three directions:

* ``grade.py PATH...`` grades notebooks, or folders of them (one folder per submission);
  exit status 0 only if every exercise passed and no cell failed;
* ``--solutions`` first replaces every exercise cell with ``notebooks/solutions/<id>.py``:
  every check must pass (the solutions and the checkers agree);
* ``--expect-stubs`` runs the notebooks as shipped: every check must report "not done" and no
  cell may fail (no check passes on an empty answer, and a stub never breaks a notebook).

In both of these modes a notebook that takes more than a minute top to bottom (kernel start
included) fails too: every notebook must run in CI in under a minute.

``--handout DIR`` writes what students get: ``DIR/notebooks`` with the notebooks without
outputs, the ``course`` package and this guide's README, ``DIR/tests/support.py`` (the fake
world of notebook 07), and no solutions.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent
ROOT = NOTEBOOKS.parent
SOLUTIONS = NOTEBOOKS / "solutions"
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
NOTEBOOK_SECONDS = 60.0
"""The most a notebook may take, top to bottom, in ``--solutions`` and ``--expect-stubs``."""

sys.path[:0] = [str(NOTEBOOKS), str(ROOT)]
from course.checks import EXERCISES, RESULTS_ENV  # noqa: E402  (needs the path above)


def read_notebook(path: Path) -> Any:
    """The notebook at *path*, as nbformat's dict-like node."""
    return nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]


@dataclass
class Verdict:
    """What the grader concluded about one exercise."""

    exercise: str
    status: str  # "pass", "todo", "fail", "unchecked", or "missing"
    message: str
    hint: str = ""


@dataclass
class Report:
    """The outcome of executing one notebook."""

    path: Path
    submission: str
    seconds: float = 0.0
    verdicts: list[Verdict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # cells that raised, malformed exercises


def exercise_cells(notebook: Any) -> list[tuple[int, str]]:
    """``(cell index, exercise id)`` of every exercise cell, in notebook order."""
    found = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code" and "exercise" in cell.metadata.get("tags", []):
            found.append((index, cell.metadata.get("exercise", "")))
    return found


def expected_exercises(path: Path, notebook: Any) -> list[str]:
    """The ids to grade in the notebook at *path*, in notebook order.

    They come from the registry (every exercise of the notebook's number, ``03`` for
    ``03_reactor_loop.ipynb``), in the order of the shipped notebook of that number, not only
    from the cells tagged ``exercise`` in the submission: a cell whose tag was lost (retyped,
    merged, or the answer written in a new cell) or deleted must still get a row. Tagged ids of
    other notebooks (a notebook of the student's own) are graded too.
    """
    number = path.name[:2]
    registered = [exercise.id for exercise in EXERCISES.values() if exercise.notebook == number]
    shipped = NOTEBOOKS / path.name
    order = (
        [exercise_id for _, exercise_id in exercise_cells(read_notebook(shipped))]
        if shipped.is_file()
        else []
    )
    expected = [exercise_id for exercise_id in order if exercise_id in registered]
    expected += [exercise_id for exercise_id in registered if exercise_id not in expected]
    tagged = [exercise_id for _, exercise_id in exercise_cells(notebook)]
    return tagged + [exercise_id for exercise_id in expected if exercise_id not in tagged]


def structure_errors(notebook: Any) -> list[str]:
    """What is wrong with the exercise/check cell pairs, if anything."""
    errors = []
    for index, exercise_id in exercise_cells(notebook):
        if exercise_id not in EXERCISES:
            errors.append(f"cell {index}: exercise {exercise_id!r} has no checker")
            continue
        following = notebook.cells[index + 1] if index + 1 < len(notebook.cells) else None
        if following is None or following.metadata.get("check") != exercise_id:
            errors.append(f"cell {index}: exercise {exercise_id!r} is not followed by its check")
    return errors


def substitute_solutions(notebook: Any) -> list[str]:
    """Replace each exercise cell's source with its solution file; return what is missing."""
    missing = []
    for index, exercise_id in exercise_cells(notebook):
        solution = SOLUTIONS / f"{exercise_id}.py"
        if not solution.is_file():
            missing.append(f"no solution file {solution.relative_to(ROOT)}")
            continue
        notebook.cells[index].source = solution.read_text(encoding="utf-8").rstrip("\n")
    return missing


def cell_errors(notebook: Any) -> list[str]:
    """One line per cell whose execution ended in an error."""
    errors = []
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                value = str(output.get("evalue", "")).strip().splitlines()
                errors.append(
                    f"cell {index} raised {output.get('ename')}: {value[0] if value else ''}"
                )
    return errors


def kernel_environment(results: Path) -> dict[str, str]:
    """The environment the kernel inherits: the results file, and this checkout first.

    ``tests/`` is on the path for notebook 07's ``from support import FakeWorld``: the notebook
    adds ``../tests``, which exists in a clone or a handout, but not beside a submission folder
    such as ``submissions/alice/``.
    """
    env = dict(os.environ)
    env[RESULTS_ENV] = str(results)
    inherited = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(NOTEBOOKS), str(ROOT), str(ROOT / "tests"), inherited) if part
    )
    return env


def execute(path: Path, submission: str, *, solutions: bool, timeout: int) -> Report:
    """Run one notebook top to bottom and read back every check's verdict."""
    report = Report(path, submission)
    notebook = read_notebook(path)
    expected = expected_exercises(path, notebook)  # before the solutions replace any cell
    report.errors += structure_errors(notebook)
    if solutions:
        report.errors += substitute_solutions(notebook)
    with tempfile.TemporaryDirectory(prefix="grade-") as scratch:
        results = Path(scratch) / "results.jsonl"
        results.touch()
        client = NotebookClient(
            notebook,
            timeout=timeout,
            kernel_name="python3",
            allow_errors=True,
            interrupt_on_timeout=True,
            error_on_timeout={
                "ename": "CellTimeoutError",
                "evalue": f"the cell ran longer than {timeout} s",
            },
            resources={"metadata": {"path": str(path.parent)}},
            extra_arguments=["--IPKernelApp.log_level=ERROR"],  # not its plain-TCP warning
        )
        started = time.monotonic()
        try:
            client.execute(env=kernel_environment(results))
        except Exception as exc:  # a dead kernel or a failed start: report, go on
            report.errors.append(f"execution stopped: {type(exc).__name__}: {exc}")
        report.seconds = time.monotonic() - started
        recorded: dict[str, dict[str, Any]] = {}
        for line in results.read_text(encoding="utf-8").splitlines():
            if line.strip():
                entry = json.loads(line)
                recorded[entry["exercise"]] = entry  # a re-run check: the last one counts
    report.errors += cell_errors(notebook)
    tagged = {exercise_id for _, exercise_id in exercise_cells(notebook)}
    for exercise_id in expected:
        entry = recorded.get(exercise_id)
        if entry is None and exercise_id not in tagged:
            report.verdicts.append(
                Verdict(
                    exercise_id,
                    "missing",
                    "no cell tagged with this exercise and no check of it ran: "
                    "restore the exercise cell and its check cell",
                )
            )
        elif entry is None:
            report.verdicts.append(
                Verdict(exercise_id, "unchecked", "its check did not run (see the errors)")
            )
        else:
            report.verdicts.append(
                Verdict(exercise_id, entry["status"], entry["message"], entry.get("hint", ""))
            )
    return report


def notebooks_in(paths: Sequence[str]) -> list[tuple[Path, str]]:
    """``(notebook, submission)`` pairs: a folder is one submission, a file its own."""
    found = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found += [(nb, path.name) for nb in sorted(path.glob(NOTEBOOK_GLOB))]
        elif path.suffix == ".ipynb" and path.is_file():
            found.append((path, path.parent.name))
        else:
            raise SystemExit(f"grade.py: {name}: not a notebook or a folder")
    return found


def course_notebooks() -> list[tuple[Path, str]]:
    """The shipped notebooks that hold at least one exercise."""
    return [
        (path, "course")
        for path in sorted(NOTEBOOKS.glob(NOTEBOOK_GLOB))
        if exercise_cells(read_notebook(path))
    ]


LABELS = {"pass": "pass", "todo": "todo", "fail": "FAIL", "unchecked": "SKIP", "missing": "MISS"}


def expected_status(mode: str) -> str | None:
    """The status every exercise must have for the run to succeed."""
    return {"grade": "pass", "solutions": "pass", "stubs": "todo"}.get(mode)


def print_report(report: Report, mode: str) -> bool:
    """Print one notebook's results; return whether it met the mode's expectation."""
    want = expected_status(mode)
    ok = not report.errors
    print(f"{report.path}  ({report.seconds:.1f} s)")
    for verdict in report.verdicts:
        met = verdict.status == want
        ok = ok and met
        mark = "ok" if met else "!!"
        print(f"  {mark} {LABELS[verdict.status]:4}  {verdict.exercise:20} {verdict.message}")
        if verdict.hint and verdict.status != "pass":
            print(f"  {'':27} hint: {verdict.hint}")
    for error in report.errors:
        print(f"  !! error  {error}")
    return ok


def write_csv(path: Path, reports: Iterable[Report]) -> None:
    """One row per exercise per notebook graded, for a spreadsheet of the class."""
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["submission", "notebook", "exercise", "level", "status", "message"])
        for report in reports:
            for verdict in report.verdicts:
                registered = EXERCISES.get(verdict.exercise)
                level = "core" if registered is None or registered.core else "stretch"
                writer.writerow(
                    [
                        report.submission,
                        report.path.name,
                        verdict.exercise,
                        level,
                        verdict.status,
                        verdict.message,
                    ]
                )
            for error in report.errors:
                writer.writerow([report.submission, report.path.name, "", "", "error", error])


def write_handout(target: Path) -> None:
    """Write the students' copy into *target*, laid out like the repository, with no solutions.

    ``target/notebooks`` gets the notebooks (no outputs), ``course/`` and this guide;
    ``target/tests/support.py`` is the fake world notebook 07 and its checks import from
    ``../tests``, so the notebooks run from the handout exactly as they do from a clone.
    """
    if target.resolve() == NOTEBOOKS or NOTEBOOKS in target.resolve().parents:
        raise SystemExit("grade.py: the handout folder must be outside notebooks/")
    notebooks = target / "notebooks"
    notebooks.mkdir(parents=True, exist_ok=True)
    for path in sorted(NOTEBOOKS.glob(NOTEBOOK_GLOB)):
        notebook = read_notebook(path)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                cell.outputs = []
                cell.execution_count = None
        nbformat.write(notebook, notebooks / path.name)  # type: ignore[no-untyped-call]
    shutil.copytree(
        NOTEBOOKS / "course",
        notebooks / "course",
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    shutil.copy2(NOTEBOOKS / "README.md", notebooks / "README.md")
    (target / "tests").mkdir(exist_ok=True)
    shutil.copy2(ROOT / "tests" / "support.py", target / "tests" / "support.py")
    print(
        f"handout written to {target}: notebooks/ (notebooks, course/, README.md) and "
        "tests/support.py; no solutions"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run the notebooks, print the results, return the exit status."""
    parser = argparse.ArgumentParser(
        description="Execute notebooks and report, per exercise, whether its check passed."
    )
    parser.add_argument("paths", nargs="*", metavar="PATH", help="notebooks or submission folders")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--solutions", action="store_true", help="fill in the solutions; every check must pass"
    )
    mode.add_argument(
        "--expect-stubs",
        action="store_true",
        help="run the stubs as shipped; every check must report 'not done'",
    )
    mode.add_argument("--handout", metavar="DIR", help="write the students' copy into DIR")
    parser.add_argument("--csv", metavar="FILE", help="also write one row per exercise to FILE")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per cell (300)")
    parser.add_argument(
        "--notebook-seconds",
        type=float,
        default=NOTEBOOK_SECONDS,
        metavar="S",
        help=f"with --solutions or --expect-stubs, fail a notebook that takes longer "
        f"({NOTEBOOK_SECONDS:.0f})",
    )
    args = parser.parse_args(argv)

    if args.handout:
        write_handout(Path(args.handout))
        return 0
    run_mode = "solutions" if args.solutions else "stubs" if args.expect_stubs else "grade"
    if args.paths:
        targets = notebooks_in(args.paths)
    elif run_mode != "grade":
        targets = course_notebooks()
    else:
        parser.error("name the notebooks or submission folders to grade")
    if not targets:
        parser.error("no notebooks found")

    reports, all_ok = [], True
    for path, submission in targets:
        report = execute(path, submission, solutions=args.solutions, timeout=args.timeout)
        if run_mode != "grade" and report.seconds > args.notebook_seconds:
            # The course promises that every notebook runs in CI in under a minute.
            report.errors.append(
                f"the notebook took {report.seconds:.1f} s, over the {args.notebook_seconds:g} s "
                "a notebook may take"
            )
        reports.append(report)
        all_ok = print_report(report, run_mode) and all_ok
    if args.csv:
        write_csv(Path(args.csv), reports)

    verdicts = [verdict for report in reports for verdict in report.verdicts]
    counts = {status: sum(v.status == status for v in verdicts) for status in LABELS}
    errors = sum(len(report.errors) for report in reports)
    print(
        f"{len(reports)} notebook(s), {len(verdicts)} exercise(s): {counts['pass']} passed, "
        f"{counts['todo']} not done, {counts['fail']} failed, {counts['unchecked']} unchecked, "
        f"{counts['missing']} missing; {errors} error(s)"
    )
    if run_mode == "stubs" and all_ok:
        print("every shipped stub reports 'not done': no check passes on an empty answer")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
