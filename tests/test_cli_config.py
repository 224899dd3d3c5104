"""``--config`` and ``--print-config`` as an operator uses them: a real ``python -m proxy``."""

from __future__ import annotations

import re
import signal
import socket

import pytest
from test_cli import REPO, Child, free_port, run_cli

from proxy.__main__ import build_parser
from proxy.configfile import settable_actions

EXAMPLE = REPO / "docs" / "proxy.example.toml"


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_a_bad_key_stops_the_proxy_before_it_listens(tmp_path):
    port = free_port()
    config = tmp_path / "proxy.toml"
    config.write_text(f'# office proxy\nport = {port}\n\ncache_size = "1G"\n')
    out = run_cli("--config", str(config))
    assert out.returncode == 2
    line = one_error_line(out.stderr)
    assert line == (
        f"python -m proxy: error: {config}:4: unknown setting 'cache_size' "
        "(did you mean 'cache-size'?)"
    )
    with socket.create_server(("127.0.0.1", port)):
        pass  # nobody took the port


@pytest.mark.parametrize(
    ("key", "toml", "flag"),
    [
        ("port", '"eighty"', "eighty"),
        ("cache-size", '"lots"', "lots"),
        ("idle-timeout", "0", "0"),
        ("log-level", '"loud"', "loud"),
        ("connect-ports", "[443, 99999]", "443,99999"),
    ],
)
def test_a_bad_value_in_the_file_reads_like_the_bad_flag(tmp_path, key, toml, flag):
    config = tmp_path / "proxy.toml"
    config.write_text(f"{key} = {toml}\n")
    from_file = run_cli("--config", str(config))
    from_flag = run_cli(f"--{key}", flag)
    assert from_file.returncode == from_flag.returncode == 2
    problem = one_error_line(from_file.stderr).split(f"{config}:1: {key}: ", 1)[1]
    assert from_flag.stderr.strip().splitlines()[-1].endswith(f"argument --{key}: {problem}")


def test_invalid_toml_is_one_line_with_its_position(tmp_path):
    config = tmp_path / "proxy.toml"
    config.write_text('port = 3128\nhost = "unterminated\n')
    out = run_cli("--config", str(config))
    assert out.returncode == 2
    assert re.fullmatch(
        rf"python -m proxy: error: {re.escape(str(config))}: invalid TOML: .*line 2.*",
        one_error_line(out.stderr),
    )


def test_a_missing_file_is_one_line(tmp_path):
    out = run_cli("--config", str(tmp_path / "nope.toml"))
    assert out.returncode == 2
    assert "cannot read: No such file or directory" in one_error_line(out.stderr)


def test_flags_override_the_file_and_the_file_overrides_defaults(tmp_path):
    (tmp_path / "rules.txt").write_text("ads.example\n")
    file_port, flag_port = free_port(), free_port()
    config = tmp_path / "proxy.toml"
    # The blocklist path is relative to the file's folder, not to the working directory.
    config.write_text(f'port = {file_port}\nno-cache = true\nblacklist = "rules.txt"\n')
    child = Child("--config", str(config), "--port", str(flag_port))
    try:
        line = child.wait_for("listening on")
        assert f"http://127.0.0.1:{flag_port} " in line
        assert f"blocklist {tmp_path / 'rules.txt'}: 1 rules" in line
        assert "cache off" in line
        child.proc.send_signal(signal.SIGTERM)
        assert child.proc.wait(20) == 0
    finally:
        child.stop()


def test_print_config_is_a_config_file_that_reads_back_the_same(tmp_path):
    config = tmp_path / "proxy.toml"
    config.write_text(
        'host = "::1"\nallow = ["::1/128"]\nconnect-ports = "8443,443"\n'
        'cache-size = "128M"\nhead-timeout = 12\naccess-log-format = "json"\n'
    )
    first = run_cli("--config", str(config), "--port", "3999", "--print-config")
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""
    for line in (
        'host = "::1"',
        "port = 3999",  # the flag over the file
        'allow = ["::1/128"]',
        "connect-ports = [443, 8443]",
        'cache-size = "128M"',
        "head-timeout = 12.0",
        "keepalive-timeout = 60.0",  # a default
        'access-log-format = "json"',
    ):
        assert line in first.stdout.splitlines(), first.stdout
    # Derived from this shell's descriptor limit: shown, but not pinned in a file made from it.
    assert [ln for ln in first.stdout.splitlines() if "max-conns" in ln][0].startswith(
        "# max-conns = "
    )
    printed = tmp_path / "printed.toml"
    printed.write_text(first.stdout)
    again = run_cli("--config", str(printed), "--print-config")
    assert again.returncode == 0, again.stderr
    # Only the first line, which names the sources, differs.
    assert again.stdout.splitlines()[1:] == first.stdout.splitlines()[1:]
    assert str(printed) in again.stdout.splitlines()[0]


def test_the_example_file_is_valid_and_shows_every_key():
    out = run_cli("--config", str(EXAMPLE), "--print-config")
    assert out.returncode == 0, out.stderr
    text = EXAMPLE.read_text()
    for key in settable_actions(build_parser()):
        assert re.search(rf"^(# )?{re.escape(key)} = ", text, re.MULTILINE), key


def test_help_shows_a_config_example():
    out = run_cli("--help")
    assert out.returncode == 0
    assert "--config /etc/proxy/proxy.toml" in out.stdout
    assert 'allow = ["10.0.0.0/8", "192.168.0.0/16"]' in out.stdout
    assert "docs/proxy.example.toml" in out.stdout


def test_a_blocklist_in_a_missing_folder_is_a_config_error_not_a_listen_error(tmp_path):
    """Exit 2 (RestartPreventExitStatus), naming the flag or the key and line (issue 19)."""
    missing = tmp_path / "no-such-folder" / "blacklist.txt"
    out = run_cli("--port", "0", "--blacklist", str(missing))
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and "cannot listen" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"python -m proxy: error: argument --blacklist: no such directory for "
        f"'{missing}': {missing.parent}"
    )
    config = tmp_path / "proxy.toml"
    config.write_text('port = 0\nblacklist = "no-such-folder/blacklist.txt"\n')
    out = run_cli("--config", str(config))
    assert out.returncode == 2, out.stderr
    assert one_error_line(out.stderr) == (
        f"python -m proxy: error: {config}:2: blacklist: no such directory for "
        f"'{missing}': {missing.parent}"
    )


def test_a_missing_blocklist_file_in_an_existing_folder_still_starts(tmp_path):
    child = Child("--port", "0", "--blacklist", str(tmp_path / "later.txt"))
    try:
        child.wait_for("listening on")
        child.proc.send_signal(signal.SIGTERM)
        assert child.proc.wait(20) == 0
    finally:
        child.stop()


def test_the_systemd_recipe_runs_the_console_script_it_installs():
    """A bare python3 -m proxy imports nothing (or PyPI's unrelated proxy.py) under systemd."""
    guide = (REPO / "docs" / "howto" / "operator.md").read_text(encoding="utf-8")
    setup = (REPO / "setup.py").read_text(encoding="utf-8")
    assert '"proxy=proxy.__main__:main"' in setup
    exec_start = re.search(r"^ExecStart=(\S+)", guide, re.MULTILINE)
    assert exec_start is not None
    venv = exec_start.group(1).removesuffix("/bin/proxy")
    assert venv != exec_start.group(1), exec_start.group(1)
    assert f"python3 -m venv {venv}" in guide
    assert f"{venv}/bin/pip install" in guide


@pytest.mark.parametrize(
    ("toml", "flags", "expected"),
    [
        (
            "port = 0\nworkers = 2\n",
            (),
            "{config}:2: workers: needs a fixed port, and {config}:1: port is 0",
        ),
        (
            "workers = 2\n",
            ("--port", "0"),
            "{config}:1: workers: needs a fixed port, and --port is 0",
        ),
        ("", ("--workers", "2", "--port", "0"), "--workers: needs a fixed port, and --port is 0"),
    ],
)
def test_workers_on_port_0_is_refused_naming_where_each_came_from(tmp_path, toml, flags, expected):
    """Refused by --print-config as well: a file it passes must also start (issue 19)."""
    config = tmp_path / "proxy.toml"
    config.write_text(toml)
    for extra in ((), ("--print-config",)):
        out = run_cli("--config", str(config), *flags, *extra)
        assert out.returncode == 2, out.stdout
        assert one_error_line(out.stderr) == (
            "python -m proxy: error: " + expected.format(config=config)
            + ": each worker binds it with SO_REUSEPORT"
        )  # fmt: skip
        assert out.stdout == ""
