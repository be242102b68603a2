"""``serve --config FILE``, ``TRIOCHAT_*`` and flags: one key per flag, flags beat the
environment, which beats the file; a bad setting is one line naming where it came from,
the key, the value and what is allowed; ``triochat config`` shows every source."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from triochat import argtypes, cli
from triochat.settings import KEYS, NOT_SETTINGS, SettingsError, layered

TRIOCHAT = [sys.executable, "-m", "triochat"]


def _settings(
    argv: list[str], environ: dict[str, str] | None = None
) -> dict[str, tuple[object, str]]:
    parsed = layered(cli.serve_parser, argtypes.Parser, argv, environ or {})
    return {key: (getattr(parsed.args, key), parsed.origins[key].source) for key in KEYS}


def test_every_flag_of_serve_has_a_key() -> None:
    dests = set(vars(cli.serve_parser(argtypes.Parser).parse_args([]))) - NOT_SETTINGS
    assert set(KEYS) == dests


def test_flags_beat_the_environment_which_beats_the_file(tmp_path: Path) -> None:
    config = tmp_path / "triochat.toml"
    config.write_text(
        'tcp_port = 6001\nport = 6000\nretention = 500\ntrusted_proxy = ["10.0.0.1"]\n'
        "no_history = true\n"
    )
    environ = {"TRIOCHAT_PORT": "7000", "TRIOCHAT_RETENTION": "700"}
    found = _settings([f"--config={config}", "--port", "8000"], environ)
    file = f"config {config}"
    assert found["port"] == (8000, "flag")
    assert found["retention"] == (700, "env TRIOCHAT_RETENTION")
    assert found["tcp_port"] == (6001, file)
    assert found["no_history"] == (True, file)
    assert found["trusted_proxy"][1] == file
    assert found["burst"] == (60, "default")


def test_a_list_on_the_command_line_replaces_the_file_s(tmp_path: Path) -> None:
    config = tmp_path / "triochat.toml"
    config.write_text('allowed_origin = ["https://a.example"]\n')
    found = _settings([f"--config={config}", "--allowed-origin", "https://b.example"])
    assert found["allowed_origin"] == (["https://b.example"], "flag")


@pytest.mark.parametrize(
    ("toml", "line"),
    [
        ('tcp_port = "x"', "tcp_port = 'x': expected `int`, got `str`"),
        ("tcp_port = 70000", "tcp_port = 70000: 70000 is not a port (0-65535)"),
        ("tcpport = 1", "tcpport = 1: unknown key (see triochat serve --help)"),
        ("auth = 'sometimes'", "auth = 'sometimes': invalid choice"),
        ("tcp_port = [", "not TOML"),
    ],
)
def test_a_bad_file_is_one_line_naming_key_value_and_rule(
    tmp_path: Path, toml: str, line: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml + "\n")
    with pytest.raises(SettingsError) as refused:
        _settings([f"--config={config}"])
    assert str(refused.value).startswith(f"config {config}: ")
    assert line in str(refused.value)


def test_a_bad_environment_variable_is_named() -> None:
    with pytest.raises(SettingsError) as refused:
        _settings([], {"TRIOCHAT_BURST": "-3"})
    assert str(refused.value) == "env TRIOCHAT_BURST: burst = '-3': -3 must be 1 or more"
    with pytest.raises(SettingsError, match="must be true or false"):
        _settings([], {"TRIOCHAT_NO_TCP": "maybe"})


def test_serve_refuses_a_bad_file_in_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("max_line = 1\n")
    done = subprocess.run(
        [*TRIOCHAT, "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"triochat: config {config}: max_line = 1: ")


def test_config_prints_every_setting_with_its_source_and_no_password(tmp_path: Path) -> None:
    config = tmp_path / "triochat.toml"
    config.write_text('redis = "redis://:hunter2@10.0.0.5:6379/1"\nretention = 500\n')
    done = subprocess.run(
        [*TRIOCHAT, "config", "--config", str(config), "--port", "7000"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env={"TRIOCHAT_BURST": "9", "PATH": "/usr/bin:/bin"},
    )
    lines = done.stdout.splitlines()
    assert "port = 7000  # flag" in lines
    assert "burst = 9  # env TRIOCHAT_BURST" in lines
    assert f"retention = 500  # config {config}" in lines
    assert f'redis = "redis://:***@10.0.0.5:6379/1"  # config {config}' in lines
    assert "hunter2" not in done.stdout
    assert len([line for line in lines if not line.startswith("#")]) + len(
        [line for line in lines if line.startswith("# ")]
    ) == len(KEYS)


def test_version() -> None:
    done = subprocess.run(
        [*TRIOCHAT, "--version"], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.startswith("triochat ")
