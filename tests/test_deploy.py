"""The deployment files in docs/deploy/: the systemd unit passes ``systemd-analyze
verify`` (where systemd is installed), the container file keeps its promises, and its
health check's command passes against a serving triochat and fails against none."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.server.test_cli import serving

DEPLOY = Path(__file__).parent.parent / "docs" / "deploy"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_systemd_unit_verifies_cleanly(tmp_path: Path) -> None:
    unit = (DEPLOY / "triochat.service").read_text()
    assert "ExecStart=/opt/triochat/bin/triochat serve" in unit
    # verify checks that the program exists: point it at one that does.
    here = tmp_path / "triochat.service"
    here.write_text(unit.replace("/opt/triochat/bin/triochat", sys.executable))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(here)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr  # warnings too: a misspelt setting is only a warning
    for setting in ("LimitNOFILE=", "Restart=on-failure", "KillSignal=SIGTERM", "User=triochat"):
        assert setting in unit


def test_the_container_file_is_two_stages_non_root_with_a_health_check() -> None:
    lines = (DEPLOY / "Containerfile").read_text().splitlines()
    assert sum(line.startswith("FROM ") for line in lines) == 2
    users = [line for line in lines if line.startswith("USER ")]
    assert users == ["USER triochat"]
    health = [line for line in lines if line.startswith("HEALTHCHECK")]
    assert len(health) == 1
    assert "/healthz" in "\n".join(lines[lines.index(health[0]) :][:2])


def _health_command() -> list[str]:
    """The HEALTHCHECK's CMD (exec form), run by this interpreter for the image's python."""
    text = (DEPLOY / "Containerfile").read_text().replace("\\\n", " ")
    [instruction] = [line for line in text.splitlines() if line.startswith("HEALTHCHECK ")]
    argv: list[str] = json.loads(instruction.split(" CMD ", 1)[1])
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


@pytest.mark.trio
async def test_the_health_check_passes_while_serving_and_fails_in_one_line_after() -> None:
    command = _health_command()
    with trio.fail_after(30):
        async with serving("--port", "0", "--tcp-port", "0", "--no-history") as (proc, urls):
            env = {**os.environ, "TRIOCHAT_PORT": urls[0].rsplit(":", 1)[1]}
            up = await trio.run_process(command, env=env, capture_stderr=True, check=False)
            assert up.returncode == 0, up.stderr
            proc.process.send_signal(signal.SIGTERM)
            assert await proc.process.wait() == 0
        down = await trio.run_process(command, env=env, capture_stderr=True, check=False)
    assert down.returncode == 1
    lines = down.stderr.decode().splitlines()
    assert len(lines) == 1, lines  # one line in the health log, not a traceback
    assert lines[0].startswith("healthz: "), lines
