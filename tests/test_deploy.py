"""The deployment files in docs/deploy/: the systemd unit passes ``systemd-analyze
verify`` (where systemd is installed), the container file keeps its promises."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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
