"""The config file in process: key lines, conversion by the flags' own actions, precedence,
``--print-config``'s TOML read back, and reloads (see tests/test_cli_config.py for the CLI)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import re
import threading
import tomllib
from pathlib import Path

import pytest

from minireactor import Reactor
from proxy.__main__ import _size_text, build_parser, config_from_args
from proxy.auth import make_entry
from proxy.config import LIVE_SETTINGS, RESTART_SETTINGS, Config, changed_settings
from proxy.configfile import (
    ConfigFileError,
    ConfigReloader,
    ConfigSource,
    Reload,
    dump,
    key_line,
    read_file,
    settable_actions,
    setting_key,
    toml_value,
)
from proxy.parent import redact_parent

SIZES = {"cache_size": _size_text, "cache_max_object": _size_text}


def source(tmp_path: Path, text: str | None, *argv: str) -> ConfigSource:
    args = list(argv)
    if text is not None:
        path = tmp_path / "proxy.toml"
        path.write_text(text, encoding="utf-8")
        args = ["--config", str(path), *args]
    return ConfigSource.from_argv(build_parser, config_from_args, args)


def load(tmp_path: Path, text: str, *argv: str) -> Config:
    return source(tmp_path, text, *argv).load()


def file_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigFileError) as caught:
        load(tmp_path, text)
    message = str(caught.value)
    assert "\n" not in message
    return message.split(str(tmp_path / "proxy.toml"), 1)[1]


def flag_error(*argv: str) -> str:
    """argparse's message for *argv*, after ``argument --flag: ``."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit):
        build_parser().parse_args(list(argv))
    return err.getvalue().strip().splitlines()[-1].split(": ", 3)[-1]


# -- where a key is ------------------------------------------------------------------------


KEY_LINES = """\
# a comment with port = 1 in it
log-level = "INFO"   # trailing comment

description = \"\"\"
port = 2
[cache]
\"\"\"
allow = [
  "10.0.0.0/8",  # a comment, a ] and a = inside
  "::1",
]
"connect-ports" = "443"
'no-cache' = true
cache.size = 1
port = 4095
[table]
x = 1
"""


@pytest.mark.parametrize(
    ("key", "line"),
    [
        ("log-level", 2),
        ("description", 4),
        ("allow", 8),
        ("connect-ports", 12),
        ("no-cache", 13),
        ("cache", 14),
        ("port", 15),
        ("table", 16),
        ("x", None),  # only inside [table]: not a top-level key
        ("absent", None),
    ],
)
def test_key_line_finds_the_statement_that_introduces_a_key(key, line):
    assert key in tomllib.loads(KEY_LINES) or line is None
    assert key_line(KEY_LINES, key) == line


def test_key_line_on_a_long_file_is_quick_enough():
    text = "".join(f"# setting {i}\nkey{i} = {i}\n" for i in range(300))
    assert key_line(text, "key299") == 600


# -- values go through the flags' own converters ----------------------------------------------


@pytest.mark.parametrize(
    ("toml", "flag", "value"),
    [
        ('port = "eighty"', "--port", "eighty"),
        ("port = 70000", "--port", "70000"),
        ("port = 80.5", "--port", "80.5"),
        ('cache-size = "lots"', "--cache-size", "lots"),
        ("idle-timeout = 0", "--idle-timeout", "0"),
        ('log-level = "loud"', "--log-level", "loud"),
        ('access-log-format = "xml"', "--access-log-format", "xml"),
        ('connect-ports = "443,http"', "--connect-ports", "443,http"),
        ("connect-ports = [443, 0]", "--connect-ports", "443,0"),
        ('allow = ["10.0.0.0/33"]', "--allow", "10.0.0.0/33"),
        ("workers = 0", "--workers", "0"),
        ('access-log = "/no/such/folder/access.log"', "--access-log", "/no/such/folder/access.log"),
    ],
)
def test_a_bad_value_reads_as_the_same_bad_flag(tmp_path, toml, flag, value):
    key = flag[2:]
    assert file_error(tmp_path, toml + "\n") == f":1: {key}: {flag_error(flag, value)}"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("prot = 1", ":2: unknown setting 'prot' (did you mean 'port'?)"),
        ("no_cache = true", ":2: unknown setting 'no_cache' (did you mean 'no-cache'?)"),
        ("[cache]\nsize = 1", ":2: unknown setting 'cache' (did you mean 'no-cache'?)"),
        ("config = 'other.toml'", ":2: unknown setting 'config'"),
        ("print-config = true", ":2: unknown setting 'print-config'"),
        ("no-cache = 1", ":2: no-cache: expected true or false, got a int"),
        ("port = true", ":2: port: expected a string or a number, got a boolean"),
        ("host = {a = 1}", ":2: host: expected a string or a number, got a table"),
        ("allow = [[1]]", ":2: allow: expected a string or a number, got an array"),
        # A list only where the flag takes several values: joined, it made host = "a,b".
        ('host = ["a", "b"]', ":2: host: expected a single value, got an array"),
        ('log-level = ["INFO"]', ":2: log-level: expected a single value, got an array"),
        ('blacklist = ["x.txt"]', ":2: blacklist: expected a single value, got an array"),
        ("port = [4095]", ":2: port: expected a single value, got an array"),
        # Empty paths are the flag's error, not the config file's own folder.
        ('access-log = ""', ":2: access-log: an empty path: give a file, -, stderr or none"),
        ('blacklist = ""', ":2: blacklist: an empty path: give the blocklist file's path"),
    ],
)
def test_unknown_keys_and_wrong_types_name_key_and_line(tmp_path, toml, message):
    assert file_error(tmp_path, "# settings\n" + toml + "\n") == message


def test_the_first_problem_in_file_order_is_reported(tmp_path):
    text = 'host = "x"\nzzz = 1\nport = "p"\naaa = 2\n'
    assert file_error(tmp_path, text) == ":2: unknown setting 'zzz'"


def test_syntax_errors_keep_tomllib_position(tmp_path):
    assert file_error(tmp_path, "port = 1\nport = 2\n").startswith(": invalid TOML: ")
    assert "line 2" in file_error(tmp_path, "port = 1\nport = 2\n")


def test_unreadable_and_non_utf8_files(tmp_path):
    with pytest.raises(ConfigFileError, match="cannot read: No such file"):
        read_file(str(tmp_path / "missing.toml"), build_parser())
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'host = "caf\xe9"\n')
    with pytest.raises(ConfigFileError, match="not UTF-8"):
        read_file(str(bad), build_parser())


def test_every_kind_of_value(tmp_path):
    (tmp_path / "users.txt").write_text(make_entry("alice", "secret", iterations=1000) + "\n")
    config = load(
        tmp_path,
        """
        host = "0.0.0.0"
        port = 3128
        workers = 2
        no-cache = true
        no-splice = true
        cache-size = "1G"
        cache-max-object = 1048576
        head-timeout = 5
        idle-timeout = 2.5
        connect-ports = [443, 8443]
        allow = "10.0.0.0/8"
        deny-private = true
        auth-file = "users.txt"
        log-level = "debug"
        access-log = "logs/../access.log"
        access-log-format = "json"
        """.replace("\n        ", "\n"),
    )
    assert (config.host, config.port, config.workers) == ("0.0.0.0", 3128, 2)
    assert not config.cache_enabled and not config.splice and config.deny_private
    assert (config.cache_size, config.cache_max_object) == (1 << 30, 1 << 20)
    assert (config.head_timeout, config.idle_timeout) == (5.0, 2.5)
    assert config.connect_ports == frozenset({443, 8443})
    assert config.allow == ("10.0.0.0/8",)
    assert config.log_level == "DEBUG"
    # Relative paths are the file's folder's, not the working directory's.
    assert config.auth_file == str(tmp_path / "users.txt")
    assert config.access_log == str(tmp_path / "access.log")
    assert config.access_log_format == "json"


def test_connect_ports_as_a_string_and_false_booleans(tmp_path):
    config = load(tmp_path, 'connect-ports = "443, 563"\nno-cache = false\ntrace = false\n')
    assert config.connect_ports == frozenset({443, 563})
    assert config.cache_enabled and not config.trace


def test_stream_names_are_not_paths(tmp_path):
    for name in ("-", "stderr", "none"):
        assert load(tmp_path, f'access-log = "{name}"\n').access_log == name


# -- precedence: defaults < file < flags --------------------------------------------------------


def test_the_file_overrides_defaults_and_typed_flags_override_the_file(tmp_path):
    text = 'port = 3128\nallow = ["10.0.0.0/8", "::1"]\nno-cache = true\nhead-timeout = 7\n'
    config = load(tmp_path, text, "--port", "3129", "--allow", "127.0.0.1")
    assert config.port == 3129
    assert config.allow == ("127.0.0.1",)  # replaced, not appended to the file's list
    assert not config.cache_enabled  # from the file
    assert config.head_timeout == 7.0
    assert config.keepalive_timeout == Config().keepalive_timeout  # default


def test_without_a_file_the_flags_and_defaults_make_the_config(tmp_path):
    config = source(tmp_path, None, "--port", "1234", "--no-cache").load()
    assert config == Config(port=1234, cache_enabled=False)


def test_a_flag_set_to_its_default_still_overrides_the_file(tmp_path):
    config = load(tmp_path, "port = 3128\n", "--port", "4095")
    assert config.port == 4095


# -- --print-config writes TOML that reads back the same ------------------------------------------


def printed(src: ConfigSource) -> str:
    return dump(src.namespace(), build_parser(), "test", SIZES)


@pytest.mark.parametrize(
    "text",
    [
        "",
        'host = "::"\nport = 0\nallow = ["10.0.0.0/8", "::1/128"]\nconnect-ports = [8443, 443]\n',
        'cache-size = 123457\ncache-max-object = "3k"\nno-cache = true\nidle-timeout = 0.1\n',
        'blacklist = "odd \\"name\\" with \\\\ and \\u00e9.txt"\naccess-log-format = "combined"\n',
    ],
)
def test_print_config_round_trips(tmp_path, text):
    first = source(tmp_path, text)
    output = printed(first)
    again = source(tmp_path, output)
    assert again.load() == first.load()
    assert printed(again) == output


def test_print_config_comments_unset_settings_and_spells_sizes():
    src = ConfigSource.from_argv(build_parser, config_from_args, [])
    output = printed(src)
    assert "# auth-file = (not set)" in output
    assert 'cache-size = "64M"' in output
    keys = {line.split(" = ")[0].lstrip("# ") for line in output.splitlines() if " = " in line}
    assert keys == set(settable_actions(build_parser()))


def test_a_derived_default_is_printed_as_a_comment_and_reads_back_unset(tmp_path):
    """A file started from --print-config must not pin the shell's --max-conns (issue 15)."""
    src = source(tmp_path, "port = 3128\n")
    output = dump(src.namespace(), build_parser(), "test", SIZES, {"max_conns": (9920, "rule")})
    assert "# max-conns = 9920  # derived here: rule" in output.splitlines()
    again = source(tmp_path, output)
    assert again.namespace().max_conns is None  # still derived where the file is used
    typed = source(tmp_path, "max-conns = 300\n")
    output = dump(typed.namespace(), build_parser(), "test", SIZES, {"max_conns": (9920, "rule")})
    assert "max-conns = 300" in output.splitlines()


def test_print_config_redacts_the_parents_password_and_still_reads_back(tmp_path):
    src = source(tmp_path, 'parent = "http://office:s3cret@gw.example:8080"\n')
    hide = {"parent": redact_parent}
    output = dump(src.namespace(), build_parser(), "test", SIZES, redact=hide)
    assert "s3cret" not in output
    lines = output.splitlines()
    at = lines.index('parent = "http://office:***@gw.example:8080"')
    assert "password redacted" in lines[at - 1]
    assert source(tmp_path, output).load().parent == "http://office:***@gw.example:8080"
    plain = source(tmp_path, 'parent = "http://gw.example:8080"\n')
    output = dump(plain.namespace(), build_parser(), "test", SIZES, redact=hide)
    assert "redacted" not in output


def test_a_reload_with_a_bad_parent_logs_no_password(tmp_path):
    path = tmp_path / "proxy.toml"
    path.write_text('parent = "http://office:s3cret@gw.example:8080"\n')
    src = ConfigSource.from_argv(build_parser, config_from_args, ["--config", str(path)])
    current = src.load()
    path.write_text('parent = "http://office:s3cret@gw.example:99999"\n')
    result = src.reload(current)
    assert result.error is not None and result.config == current
    assert "s3cret" not in result.summary() and "office:***@" in result.summary()


def test_the_example_file_pins_no_derived_or_default_value():
    """Copied to /etc as the guide says, it must leave max-conns to the descriptor limit."""
    example = Path(__file__).resolve().parent.parent / "docs" / "proxy.example.toml"
    values = read_file(str(example), build_parser())
    assert "max_conns" not in values
    defaults = vars(build_parser().parse_args([]))
    restated = {k for k, v in values.items() if v == defaults[k]} - {"host", "port"}
    assert restated == set(), restated


def test_toml_value_refuses_what_toml_cannot_say():
    with pytest.raises(TypeError):
        toml_value(None)
    with pytest.raises(TypeError):
        toml_value(float("inf"))
    assert toml_value("a\tb\x7f") == '"a\\u0009b\\u007f"'


# -- live and restart settings ----------------------------------------------------------------


def test_every_field_is_either_live_or_restart():
    names = {f.name for f in dataclasses.fields(Config)}
    assert names == LIVE_SETTINGS | RESTART_SETTINGS
    assert not LIVE_SETTINGS & RESTART_SETTINGS


def test_setting_keys_are_the_flags_for_every_field_that_has_one():
    keys = set(settable_actions(build_parser()))
    dests = {action.dest for action in settable_actions(build_parser()).values()}
    for f in dataclasses.fields(Config):
        has_flag = f.name in dests or f.name in ("cache_enabled", "splice")
        assert (setting_key(f.name) in keys) == has_flag, f.name


def test_changed_settings_in_field_order():
    assert changed_settings(Config(), Config(port=1, host="::", trace=True)) == (
        "host",
        "port",
        "trace",
    )


def test_reload_applies_live_settings_and_reports_the_rest(tmp_path):
    src = source(tmp_path, 'port = 3128\nhead-timeout = 10\nallow = ["10.0.0.0/8"]\n')
    running = src.load()
    path = tmp_path / "proxy.toml"
    path.write_text(
        'port = 3999\nhead-timeout = 2\nallow = []\nno-cache = true\nlog-level = "debug"\n'
    )
    result = src.reload(running)
    assert result.error is None
    assert result.applied == ("head_timeout", "allow", "log_level")  # in Config's order
    assert result.needs_restart == ("port", "cache_enabled")
    assert result.config.head_timeout == 2.0 and result.config.allow == ()
    assert result.config.log_level == "DEBUG"
    assert result.config.port == 3128 and result.config.cache_enabled  # kept until a restart
    assert result.summary() == (
        "config reloaded: changed head-timeout, allow, log-level; "
        "needs a restart to change: port, no-cache"
    )


def test_reload_keeps_typed_flags_over_the_file(tmp_path):
    src = source(tmp_path, "head-timeout = 10\n", "--head-timeout", "3")
    running = src.load()
    (tmp_path / "proxy.toml").write_text("head-timeout = 20\nidle-timeout = 9\n")
    result = src.reload(running)
    assert result.config.head_timeout == 3.0
    assert result.config.idle_timeout == 9.0
    assert result.applied == ("idle_timeout",)


@pytest.mark.parametrize("broken", ["port = \n", "prot = 1\n", 'idle-timeout = "never"\n', None])
def test_a_bad_reload_changes_nothing_and_says_why(tmp_path, broken):
    src = source(tmp_path, "idle-timeout = 10\n")
    running = src.load()
    path = tmp_path / "proxy.toml"
    if broken is None:
        path.unlink()
    else:
        path.write_text(broken)
    result = src.reload(running)
    assert result.config is running
    assert result.applied == () and result.needs_restart == ()
    assert result.error is not None and str(path) in result.error
    assert result.summary().startswith("config not reloaded, the running configuration stays: ")


def test_reload_without_a_file_is_a_no_op(tmp_path):
    running = Config()
    result = source(tmp_path, None).reload(running)
    assert result == Reload(running, (), (), None)
    assert result.summary() == "config reloaded: changed nothing"


def test_the_reloader_reads_off_the_loop_and_applies_on_it(tmp_path, reactor: Reactor):
    src = source(tmp_path, "idle-timeout = 10\n")
    loop_thread = threading.get_ident()  # run_until drives the loop on this thread
    state = {"config": src.load()}
    applied: list[tuple[Reload, bool]] = []

    def apply(result: Reload) -> None:
        applied.append((result, threading.get_ident() == loop_thread))
        state["config"] = result.config

    reloader = ConfigReloader(src, reactor, lambda: state["config"], apply)
    (tmp_path / "proxy.toml").write_text("idle-timeout = 4\n")
    reactor.call_soon(reloader.request)
    reactor.call_soon(reloader.request)  # a second signal while the first read runs: once more
    assert reactor.run_until(lambda: len(applied) == 2, timeout=20)
    (first, on_loop), (second, _) = applied
    assert on_loop
    assert first.applied == ("idle_timeout",) and state["config"].idle_timeout == 4.0
    assert second.applied == ()  # the second read saw the same file


def test_argparse_namespace_of_defaults_has_every_config_field():
    # config_from_args must accept a namespace built from defaults alone.
    namespace = ConfigSource.from_argv(build_parser, config_from_args, []).namespace()
    assert isinstance(namespace, argparse.Namespace)
    assert config_from_args(namespace) == Config()


def test_the_operator_guide_lists_exactly_the_restart_settings():
    guide = (Path(__file__).resolve().parent.parent / "docs/howto/operator.md").read_text()
    paragraph = guide.split("These need a restart", 1)[1].split("The proxy logs", 1)[0]
    listed = set(re.findall(r"`([a-z-]+)`", paragraph))
    keys = set(settable_actions(build_parser()))
    assert listed == {setting_key(name) for name in RESTART_SETTINGS} & keys


def test_the_reloader_reports_a_surprise_and_keeps_working(tmp_path, reactor: Reactor):
    src = source(tmp_path, "idle-timeout = 10\n")
    running = src.load()
    results: list[Reload] = []

    def explode(_config: Config) -> Reload:
        raise RuntimeError("converter bug")

    broken = ConfigReloader(src, reactor, lambda: running, results.append)
    object.__setattr__(src, "reload", explode)  # the frozen source, patched for this test
    reactor.call_soon(broken.request)
    assert reactor.run_until(lambda: len(results) == 1, timeout=20)
    assert results[0].config is running and "converter bug" in (results[0].error or "")
    reactor.call_soon(broken.request)  # not stuck "running"
    assert reactor.run_until(lambda: len(results) == 2, timeout=20)


def test_parent_bypass_in_a_file_is_one_flat_list_either_way(tmp_path):
    """A list and a comma-separated string give the same list; --print-config reads back."""
    for text in ('["a.example", "10.0.0.0/8"]', '"a.example,10.0.0.0/8"'):
        config = source(
            tmp_path, f'parent = "http://127.0.0.1:3128"\nparent-bypass = {text}\n'
        ).load()
        assert config.parent_bypass == ("a.example", "10.0.0.0/8")
