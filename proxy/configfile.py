"""Settings from a TOML file under the command line: ``--config``, ``--print-config``, reloads.

Theory of operation
-------------------
A config file is the command line written down. Each key is a long flag name without its
dashes (``port = 4095``, ``no-cache = true``, ``allow = ["10.0.0.0/8"]``), and each value goes
through the *same* :mod:`argparse` action as the flag, with the same type converter and the same
choices, so ``port = "eighty"`` in the file and ``--port eighty`` on the command line fail with
the same words. TOML numbers and lists are first turned into the text the flag would get
(``connect-ports = [443, 8443]`` becomes ``443,8443``); a list for a repeatable flag is the flag
given once per item. An array is accepted only there: for a key that takes one value
(``host = ["a", "b"]``) it is an error, not a comma-joined surprise. Paths in the file
(``blacklist``, ``auth-file``, ``access-log``) are taken relative to the file's own folder, so a
unit file need not care about the working directory.

Precedence is defaults < file < command line. To know which flags were really typed (a default
is no override), the arguments are parsed once more by a copy of the parser whose defaults are
all ``SUPPRESS``: the namespace it returns holds the typed flags and nothing else. A repeatable
flag given on the command line therefore replaces the file's list rather than extending it.

Errors name the file, the line and the key in one line. :mod:`tomllib` gives no positions for
keys, so :func:`key_line` finds them with the parser itself: a prefix of the file parses only
if it ends on a statement boundary (a multi-line string or array cut in the middle never
parses), and the statement that introduced a key starts one line past the longest parsable
prefix that lacks the key. That is robust to strings holding ``=`` or ``#``, quoted keys and
arrays over several lines, and costs a parse per line, only when an error is reported.

A reload (``SIGHUP``) builds a whole new :class:`~proxy.config.Config` from the file and the
same command line, then applies only what can change live (:data:`~proxy.config.LIVE_SETTINGS`)
and reports the rest (:data:`~proxy.config.RESTART_SETTINGS`). A file that no longer parses or
validates changes nothing: the report carries the error and the old configuration. Reading the
file is blocking, so :class:`ConfigReloader` does it on a short-lived thread and hands the
result to the reactor with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
import threading
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .config import LIVE_SETTINGS, Config, changed_settings

ParserFactory = Callable[[], argparse.ArgumentParser]
ToConfig = Callable[[argparse.Namespace], Config]

NOT_IN_FILE = frozenset({"help", "version", "config", "print_config"})
"""Destinations of flags that make no sense inside a config file."""

PATH_SETTINGS = frozenset({"blacklist", "auth_file", "access_log"})
"""Destinations whose relative paths are resolved against the config file's folder."""

COMMA_LIST_SETTINGS = frozenset({"connect_ports"})
"""Single flags whose text is a comma-separated list: a TOML array is joined for them."""

STREAM_NAMES = frozenset({"-", "stderr", "none"})
"""``--access-log`` values that are not paths."""


class ConfigFileError(Exception):
    """A config file that cannot be used; ``str()`` is the one-line message."""


def settable_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Config-file key (long flag name without dashes) -> the parser's action for it."""
    actions: dict[str, argparse.Action] = {}
    for action in parser._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs and action.dest not in NOT_IN_FILE:
            actions[longs[0][2:]] = action
    return actions


def key_line(text: str, key: str) -> int | None:
    """The 1-based line where top-level *key* is introduced in TOML *text*, if it is."""
    lines = text.splitlines(keepends=True)
    statement_start = 1
    for end in range(1, len(lines) + 1):
        try:
            document = tomllib.loads("".join(lines[:end]))
        except tomllib.TOMLDecodeError:
            continue  # the prefix cuts a statement: the statement goes on
        if key in document:
            return statement_start
        statement_start = end + 1
    return None


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"


def _flag_text(value: object) -> str:
    """A TOML scalar as the text the flag would receive on the command line."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    raise ValueError(f"expected a string or a number, got {_kind(value)}")


def _resolve(value: str, dest: str, folder: str) -> str:
    if dest == "access_log" and value in STREAM_NAMES:
        return value
    if not value.strip():
        return value  # the flag's converter says what is wrong; joined, it would be the folder
    return os.path.normpath(os.path.join(folder, os.path.expanduser(value)))


def _convert(
    parser: argparse.ArgumentParser, action: argparse.Action, value: object, folder: str
) -> object:
    """Run a TOML value through *action* as argparse would run the flag's text."""
    if action.nargs == 0:  # --no-cache, --trace...: true sets the flag, false leaves the default
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {_kind(value)}")
        return action.const if value else action.default
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, list) else [value]
        texts = [_flag_text(item) for item in items]
    elif isinstance(value, list):
        if not (isinstance(action, argparse._ExtendAction) or action.dest in COMMA_LIST_SETTINGS):
            raise ValueError(f"expected a single value, got {_kind(value)}")
        texts = [",".join(_flag_text(item) for item in value)]
    else:
        texts = [_flag_text(value)]
    if action.dest in PATH_SETTINGS:
        texts = [_resolve(text, action.dest, folder) for text in texts]
    try:
        # The parser's own conversion: the type converter, then the choices check, with the
        # exact messages a bad flag gets.
        converted = [parser._get_values(action, [text]) for text in texts]
    except argparse.ArgumentError as exc:
        raise ValueError(exc.message) from None
    if isinstance(action, argparse._ExtendAction):
        # An "extend" flag's converter gives a list per text (--parent-bypass a,b): one list.
        return [item for part in converted for item in part]
    return converted if isinstance(action, argparse._AppendAction) else converted[0]


def read_file(path: str, parser: argparse.ArgumentParser) -> dict[str, object]:
    """The file's settings as ``{dest: value}``, each value converted by its flag's action.

    :raises ConfigFileError: unreadable file, TOML syntax error, unknown key or bad value,
        with the first problem in file order.
    """
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
        document = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise ConfigFileError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{path}: invalid TOML: {exc}") from None
    actions = settable_actions(parser)
    folder = os.path.dirname(os.path.abspath(path))
    values: dict[str, object] = {}
    problems: list[tuple[int, str]] = []
    for key, value in document.items():
        action = actions.get(key)
        if action is None:
            close = difflib.get_close_matches(key, list(actions), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append((key_line(text, key) or 0, f"unknown setting {key!r}{hint}"))
            continue
        try:
            values[action.dest] = _convert(parser, action, value, folder)
        except ValueError as exc:
            problems.append((key_line(text, key) or 0, f"{key}: {exc}"))
    if problems:
        line, message = min(problems)
        raise ConfigFileError(f"{path}:{line}: {message}" if line else f"{path}: {message}")
    return values


@dataclass(frozen=True)
class ConfigSource:
    """Where the effective configuration comes from: defaults, a file, the typed flags."""

    parser_factory: ParserFactory
    to_config: ToConfig
    path: str | None
    typed: Mapping[str, object]
    """The flags given on the command line, as ``{dest: value}`` (defaults excluded)."""

    @classmethod
    def from_argv(
        cls, parser_factory: ParserFactory, to_config: ToConfig, argv: Sequence[str] | None
    ) -> ConfigSource:
        """Parse *argv* (exiting with status 2 on a bad flag, as argparse does)."""
        parser_factory().parse_args(argv)  # --help, --version, errors: with the real defaults
        typed_only = parser_factory()
        for action in typed_only._actions:
            action.default = argparse.SUPPRESS
        typed = vars(typed_only.parse_args(argv))
        path = typed.get("config")
        return cls(parser_factory, to_config, str(path) if path else None, typed)

    def namespace(self) -> argparse.Namespace:
        """Defaults, then the file, then the typed flags, merged.

        :raises ConfigFileError: if the file cannot be used.
        """
        parser = self.parser_factory()
        merged = vars(parser.parse_args([]))
        if self.path is not None:
            merged.update(read_file(self.path, parser))
        merged.update(self.typed)
        return argparse.Namespace(**merged)

    def where(self, dest: str) -> str:
        """Where setting *dest* came from, as an error names it: ``--port`` when it was typed,
        ``FILE:LINE: port`` when the file set it, ``port (the default)`` otherwise."""
        keys = {action.dest: key for key, action in settable_actions(self.parser_factory()).items()}
        key = keys[dest]
        if dest in self.typed:
            return f"--{key}"
        if self.path is not None:
            try:
                with open(self.path, encoding="utf-8") as handle:
                    line = key_line(handle.read(), key)
            except (OSError, UnicodeDecodeError):
                line = None
            if line is not None:
                return f"{self.path}:{line}: {key}"
        return f"{key} (the default)"

    def load(self) -> Config:
        """The effective :class:`~proxy.config.Config`.

        :raises ConfigFileError: if the file cannot be used.
        """
        return self.to_config(self.namespace())

    def reload(self, current: Config) -> Reload:
        """Read the file again; apply what may change live to *current*, report the rest.

        Never raises for a bad file: the :class:`Reload` then carries the error and *current*.
        """
        if self.path is None:
            return Reload(current, (), (), None)
        try:
            fresh = self.load()
        except ConfigFileError as exc:
            return Reload(current, (), (), str(exc))
        changed = changed_settings(current, fresh)
        live = tuple(name for name in changed if name in LIVE_SETTINGS)
        later = tuple(name for name in changed if name not in LIVE_SETTINGS)
        applied = dataclasses.replace(current, **{name: getattr(fresh, name) for name in live})
        return Reload(applied, live, later, None)


def setting_key(field_name: str) -> str:
    """The config-file key that sets :class:`~proxy.config.Config` field *field_name*."""
    return _KEYS_NAMED_APART.get(field_name, field_name.replace("_", "-"))


# Fields whose flag is not their name with dashes (a negation, or a shorter word).
_KEYS_NAMED_APART = {
    "cache_enabled": "no-cache",
    "splice": "no-splice",
    "admin_users": "admin-user",
    "via_pseudonym": "via-name",
}


@dataclass(frozen=True)
class Reload:
    """The outcome of re-reading the config file."""

    config: Config
    """What to run with now: the new live settings over the old configuration."""
    applied: tuple[str, ...]
    """Fields changed live (:data:`~proxy.config.LIVE_SETTINGS`)."""
    needs_restart: tuple[str, ...]
    """Fields that changed in the file but keep their old value until a restart."""
    error: str | None
    """Why the file could not be used (nothing changed), or None."""

    def summary(self) -> str:
        """One line for the log."""
        if self.error is not None:
            return f"config not reloaded, the running configuration stays: {self.error}"
        applied = ", ".join(setting_key(name) for name in self.applied) or "nothing"
        text = f"config reloaded: changed {applied}"
        if self.needs_restart:
            later = ", ".join(setting_key(name) for name in self.needs_restart)
            text += f"; needs a restart to change: {later}"
        return text


class ThreadsafeScheduler(Protocol):
    """What the reloader needs of the reactor."""

    def call_soon_threadsafe(self, callback: Callable[..., Any], *args: Any) -> object:
        """Run ``callback(*args)`` on the loop, from any thread."""
        ...


class ConfigReloader:
    """Re-reads the file off the reactor thread and hands the :class:`Reload` back to it."""

    def __init__(
        self,
        source: ConfigSource,
        scheduler: ThreadsafeScheduler,
        current: Callable[[], Config],
        apply: Callable[[Reload], None],
    ) -> None:
        self._source = source
        self._scheduler = scheduler
        self._current = current
        self._apply = apply
        self._running = False
        self._again = False

    def request(self) -> None:
        """Start a reload (on the loop, e.g. from a SIGHUP handler); signals in a burst coalesce."""
        if self._running:
            self._again = True  # the file may have changed after the running read began
            return
        self._running = True
        snapshot = self._current()
        threading.Thread(
            target=self._read, args=(snapshot,), name="proxy-config-reload", daemon=True
        ).start()

    def _read(self, current: Config) -> None:
        # On the helper thread: read and validate, touch nothing of the proxy's. Whatever goes
        # wrong must come back as a report, or _running would stay set and block every reload.
        try:
            result = self._source.reload(current)
        except Exception as exc:  # noqa: BLE001 - a converter's surprise is still a report
            result = Reload(current, (), (), f"{self._source.path}: {exc!r}")
        self._scheduler.call_soon_threadsafe(self._done, result)

    def _done(self, result: Reload) -> None:
        self._running = False
        self._apply(result)
        if self._again:
            self._again = False
            self.request()


# -- writing the effective configuration ----------------------------------------------------------


def _toml_string(text: str) -> str:
    out = ['"']
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif c < " " or c == "\x7f":
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def toml_value(value: object) -> str:
    """*value* (a flag's converted value) as TOML its converter accepts back.

    :raises TypeError: for a type with no TOML spelling here (None has none in TOML).
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"no TOML for {value!r} that a flag accepts")
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (frozenset, set)):
        return "[" + ", ".join(toml_value(v) for v in sorted(value)) + "]"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {type(value).__name__}")


def dump(
    namespace: argparse.Namespace,
    parser: argparse.ArgumentParser,
    origin: str,
    spell: Mapping[str, Callable[[Any], str]] | None = None,
    derived: Mapping[str, tuple[object, str]] | None = None,
    redact: Mapping[str, Callable[[str], str]] | None = None,
) -> str:
    """The settings in *namespace* as a config file, grouped as ``--help`` groups the flags.

    *spell* maps a destination to a function writing its value as the flag's text (``64M``
    rather than ``67108864``); the text becomes a TOML string, which the converter reads back.
    Settings with no value (``auth-file`` unset) are written as comments. Paths are written
    absolute: the file reads relative paths from its own folder, flags from the working one.

    *derived* maps a destination left unset (None in *namespace*) to the value the proxy
    computes for it on this machine and how: ``max_conns`` follows the descriptor limit. Such a
    value is written as a comment, never a key, so a file started from this output keeps
    deriving it where it runs instead of pinning this shell's figure.

    *redact* maps a destination to a function hiding its secret (the parent proxy's password).
    A value it changes is written hidden, after a comment saying so: the output stays a file
    ``--config`` reads, but it never carries the secret to a terminal, a ticket or a paste.
    """
    spell = spell or {}
    derived = derived or {}
    redact = redact or {}
    lines = [f"# Effective configuration of python -m proxy ({origin}).", ""]
    keys = {action.dest: key for key, action in settable_actions(parser).items()}
    for group in parser._action_groups:
        body = []
        for action in group._group_actions:
            key = keys.get(action.dest)
            if key is None:
                continue
            value = getattr(namespace, action.dest)
            if value is None and action.dest in derived:
                figure, how = derived[action.dest]
                body.append(f"# {key} = {toml_value(figure)}  # derived here: {how}")
            elif value is None:
                body.append(f"# {key} = (not set)")
            elif action.dest in PATH_SETTINGS and value not in STREAM_NAMES:
                body.append(f"{key} = {toml_value(os.path.abspath(value))}")
            elif action.dest in redact and redact[action.dest](value) != value:
                body.append(f"# {key}: password redacted; put the real one back to use this file")
                body.append(f"{key} = {toml_value(redact[action.dest](value))}")
            elif action.dest in spell:
                body.append(f"{key} = {toml_value(spell[action.dest](value))}")
            else:
                body.append(f"{key} = {toml_value(value)}")
        if body:
            lines.append(f"# {group.title}")
            lines.extend(body)
            lines.append("")
    return "\n".join(lines)
