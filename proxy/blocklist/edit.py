"""``python -m proxy.blocklist``: add, remove, list and check rules of ``blacklist.txt``.

Theory of operation
-------------------
The original ``block.py`` appended a line to the file.  Two concurrent runs could
interleave their writes, a crash could leave half a file, and the running proxy
might read it while it was being written.  This tool instead

1. validates every rule given on the command line first, with the same parser the
   proxy uses (:func:`proxy.blocklist.rules.parse_rule`); one bad rule and nothing is
   written (exit status 2);
2. takes an exclusive :func:`fcntl.flock` on a lock file beside the list
   (``.blacklist.txt.lock``; it is left in place, since deleting a lock file races
   with the next locker; without :mod:`fcntl`, e.g. on Windows, edits are not
   serialised);
3. reads the file, edits its lines (comments, blank lines and order are kept;
   rules are compared in canonical form, so ``WWW.Example.com.`` equals
   ``www.example.com``);
4. writes a temporary file in the same folder, flushes and ``fsync``\\ s it, gives it
   the old file's permission bits, renames it over the list with :func:`os.replace`
   and ``fsync``\\ s the folder.  Readers (the proxy's watcher) see the old file or
   the new one, never a mix; a crash leaves the old file whole.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

from .rules import Blocklist, canonical_rule, parse

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

PROG = "python -m proxy.blocklist"
EPILOG = """\
exit status:
  0  success; for check: the URL is blocked
  1  remove: some rule was not present; check: the URL is not blocked
  2  usage error or invalid rule (the file is left untouched)
  3  the file could not be read or written

The file is edited atomically under a lock (.NAME.lock beside it); comments,
blank lines and the order of rules are kept.
"""


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser (also rendered in the documentation)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Edit or query the proxy's URL blocklist.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--file", default="blacklist.txt", help="blocklist file (default: ./blacklist.txt)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add = sub.add_parser("add", help="append rules that are not present yet")
    add.add_argument("rules", nargs="+", metavar="RULE", help="a rule, e.g. example.com")
    remove = sub.add_parser("remove", help="remove the lines holding these rules")
    remove.add_argument("rules", nargs="+", metavar="RULE", help="a rule as it was added")
    sub.add_parser("list", help="print the rules with line numbers, and invalid lines")
    check = sub.add_parser("check", help="tell whether a URL (or host:port) is blocked")
    check.add_argument("url", metavar="URL", help="an absolute URL or a host:port")
    return parser


def _error(message: str) -> None:
    """Print a one-line error on stderr."""
    print(f"{PROG.split()[-1]}: {message}", file=sys.stderr)


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """Hold an exclusive lock on ``.NAME.lock`` beside *path* (no-op without fcntl)."""
    folder, name = os.path.split(path)
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(os.path.join(folder, f".{name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _read(path: str) -> tuple[bytes, str]:
    """Return (BOM, text) of *path*; a missing file reads as empty."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return b"", ""
    bom = b"\xef\xbb\xbf" if data.startswith(b"\xef\xbb\xbf") else b""
    return bom, data[len(bom) :].decode("utf-8")


def write_atomically(path: str, data: bytes) -> None:
    """Replace *path* by *data*: temp file, fsync, keep mode bits, rename, fsync folder.

    On any error the temporary file is removed and *path* is left as it was.
    """
    folder, name = os.path.split(path)
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # not every platform can fsync a folder
        dfd = os.open(folder or ".", os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _rule_key(line: str) -> str | None:
    """Canonical form of the rule on *line*, or None for a comment, blank or bad line."""
    rules = parse(line).rules
    return canonical_rule(rules[0].text) if rules else None


def _edit(path: str, command: str, wanted: dict[str, str]) -> int:
    """Add or remove the rules of *wanted* (canonical form -> text) under the lock."""
    with _locked(path):
        bom, text = _read(path)
        lines = text.splitlines(keepends=True)
        keys = [_rule_key(line) for line in lines]
        status = 0
        if command == "add":
            newline = "\r\n" if lines and lines[0].endswith("\r\n") else "\n"
            if lines and not lines[-1].endswith(("\n", "\r")):
                lines[-1] += newline
            for key, rule in wanted.items():
                if key in keys:
                    print(f"already present: {rule} (line {keys.index(key) + 1})")
                else:
                    lines.append(rule + newline)
                    keys.append(key)
                    print(f"added: {rule}")
        else:
            kept = [line for line, key in zip(lines, keys, strict=True) if key not in wanted]
            for key, rule in wanted.items():
                numbers = [str(n) for n, k in enumerate(keys, 1) if k == key]
                if numbers:
                    print(f"removed: {rule} (line {', '.join(numbers)})")
                else:
                    print(f"not present: {rule}")
                    status = 1
            lines = kept
        new_text = "".join(lines)
        if new_text != text or (command == "add" and not os.path.exists(path)):
            write_atomically(path, bom + new_text.encode("utf-8"))
        return status


def _list(blocklist: Blocklist) -> int:
    """Print the rules and the invalid lines, in line order."""
    rows = [(r.line, f"{r.line:5}  {r.text}") for r in blocklist.rules]
    rows += [(e.line, f"{e.line:5}  {e.text}    <- invalid: {e.message}") for e in blocklist.errors]
    for _, row in sorted(rows):
        print(row)
    print(f"{len(blocklist)} rules, {len(blocklist.errors)} invalid lines")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status (see ``--help``)."""
    args = build_parser().parse_args(argv)
    path = os.path.realpath(args.file)  # edit the target of a symlink, keep the link
    try:
        if args.command in ("add", "remove"):
            wanted: dict[str, str] = {}
            for rule in args.rules:
                try:
                    wanted.setdefault(canonical_rule(rule), rule.strip())
                except ValueError as exc:
                    _error(f"invalid rule {rule!r}: {str(exc).splitlines()[0]}")
                    return 2
            return _edit(path, args.command, wanted)
        if args.command == "list" and not os.path.exists(path):
            print(f"0 rules ({args.file} does not exist)")
            return 0
        blocklist = parse(_read(path)[1])
        if args.command == "list":
            return _list(blocklist)
        try:
            match = blocklist.match_url(args.url)
        except ValueError as exc:
            _error(f"invalid URL {args.url!r}: {exc}")
            return 2
        if match is None:
            print("not blocked")
            return 1
        print(f"blocked by rule {match.rule.text!r} (line {match.rule.line})")
        return 0
    except (OSError, UnicodeDecodeError) as exc:
        _error(f"{args.file}: {exc}")
        return 3
