"""Tests of ``python -m proxy.blocklist``: edits, validation, atomicity, locking."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from proxy.blocklist import edit
from proxy.blocklist.edit import build_parser, main

REPO = Path(__file__).resolve().parent.parent
HEADER = "# my blocklist\n\nexample.com  # ads\n# old.org\nbad rule here\nsite.net\n"


def run(path: Path, *args: str) -> int:
    return main(["--file", str(path), *args])


@pytest.fixture
def listfile(tmp_path: Path) -> Path:
    path = tmp_path / "blacklist.txt"
    path.write_text(HEADER)
    return path


def test_add_appends_and_keeps_comments(listfile: Path, capsys: pytest.CaptureFixture) -> None:
    assert run(listfile, "add", "new.org", "*.cdn.io") == 0
    assert listfile.read_text() == HEADER + "new.org\n*.cdn.io\n"
    assert "added: new.org" in capsys.readouterr().out


def test_add_never_duplicates(listfile: Path, capsys: pytest.CaptureFixture) -> None:
    assert run(listfile, "add", "EXAMPLE.com.", "http://site.net/", "n.io", "N.io") == 0
    out = capsys.readouterr().out
    assert "already present: EXAMPLE.com. (line 3)" in out
    assert "already present: http://site.net/ (line 6)" in out
    assert listfile.read_text() == HEADER + "n.io\n"


def test_add_creates_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "new.txt"
    assert run(path, "add", "example.com") == 0
    assert path.read_text() == "example.com\n"


def test_add_to_file_without_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "b.txt"
    path.write_bytes(b"a.com\r\nb.com")
    assert run(path, "add", "c.com") == 0
    assert path.read_bytes() == b"a.com\r\nb.com\r\nc.com\r\n"


@pytest.mark.parametrize("command", ["add", "remove"])
def test_invalid_rule_exit_2_and_file_untouched(
    listfile: Path, command: str, capsys: pytest.CaptureFixture
) -> None:
    before = listfile.read_bytes()
    assert run(listfile, command, "good.com", "exa mple.com") == 2
    assert listfile.read_bytes() == before
    err = capsys.readouterr().err.strip()
    assert err == "proxy.blocklist: invalid rule 'exa mple.com': contains whitespace"


def test_remove(listfile: Path, capsys: pytest.CaptureFixture) -> None:
    assert run(listfile, "remove", "Example.COM") == 0
    assert listfile.read_text() == "# my blocklist\n\n# old.org\nbad rule here\nsite.net\n"
    assert "removed: Example.COM (line 3)" in capsys.readouterr().out


def test_remove_not_present_exit_1(listfile: Path, capsys: pytest.CaptureFixture) -> None:
    assert run(listfile, "remove", "old.org", "site.net") == 1  # old.org is a comment
    assert "not present: old.org" in capsys.readouterr().out
    assert "site.net" not in listfile.read_text()
    assert "# old.org" in listfile.read_text()


def test_list(listfile: Path, capsys: pytest.CaptureFixture) -> None:
    assert run(listfile, "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["3", "example.com"]
    assert lines[1].startswith("    5  bad rule here    <- invalid: ")
    assert lines[2].split() == ["6", "site.net"]
    assert lines[3] == "2 rules, 1 invalid lines"


@pytest.mark.parametrize(
    ("url", "status", "text"),
    [
        ("http://www.example.com/x", 0, "blocked by rule 'example.com' (line 3)"),
        ("site.net:443", 0, "blocked by rule 'site.net' (line 6)"),
        ("http://netflix.com/", 1, "not blocked"),
    ],
)
def test_check(
    listfile: Path, url: str, status: int, text: str, capsys: pytest.CaptureFixture
) -> None:
    assert run(listfile, "check", url) == status
    assert capsys.readouterr().out.strip() == text


def test_crash_before_rename_keeps_old_file(
    listfile: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    before = listfile.read_bytes()

    def crash(src: str, dst: str) -> None:
        raise OSError("simulated crash")

    monkeypatch.setattr(os, "replace", crash)
    assert run(listfile, "add", "new.org") == 3
    assert listfile.read_bytes() == before
    leftovers = [p.name for p in listfile.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    assert "simulated crash" in capsys.readouterr().err


def test_permissions_preserved(listfile: Path) -> None:
    listfile.chmod(0o640)
    assert run(listfile, "add", "new.org") == 0
    assert stat.S_IMODE(listfile.stat().st_mode) == 0o640
    assert (listfile.parent / ".blacklist.txt.lock").exists()


def test_symlink_target_edited(tmp_path: Path) -> None:
    real = tmp_path / "real.txt"
    real.write_text("a.com\n")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    assert run(link, "add", "b.com") == 0
    assert link.is_symlink() and real.read_text() == "a.com\nb.com\n"


def test_concurrent_adds_in_threads(tmp_path: Path) -> None:
    path = tmp_path / "b.txt"
    names = [f"host{i}.example" for i in range(20)]
    threads = [threading.Thread(target=run, args=(path, "add", n)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(path.read_text().split()) == sorted(names)


def test_concurrent_adds_in_subprocesses(tmp_path: Path) -> None:
    path = tmp_path / "b.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "proxy.blocklist", "--file", str(path), "add"]
    procs = [
        subprocess.Popen([*cmd, f"p{i}.example"], env=env, stdout=subprocess.DEVNULL)
        for i in range(6)
    ]
    assert [p.wait(timeout=60) for p in procs] == [0] * 6
    assert sorted(path.read_text().split()) == [f"p{i}.example" for i in range(6)]


def test_parser_and_usage_errors(capsys: pytest.CaptureFixture) -> None:
    parser = build_parser()
    assert parser.prog == "python -m proxy.blocklist"
    assert "exit status" in parser.format_help()
    with pytest.raises(SystemExit) as exc:
        main(["add"])
    assert exc.value.code == 2
    capsys.readouterr()


def test_list_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run(tmp_path / "none.txt", "list") == 0
    assert "0 rules" in capsys.readouterr().out


def test_check_invalid_url(listfile: Path) -> None:
    assert run(listfile, "check", "http://exa mple.com/") == 2


def test_module_docstrings() -> None:
    assert edit.__doc__ and edit.main.__doc__ and edit.build_parser.__doc__
