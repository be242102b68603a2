"""Ctrl-C during a run: one line on stderr, exit 130, and the report of what finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import trio

from harness.model import Interruption, Report
from harness.report import interruption_line

HARNESS = [sys.executable, "-m", "harness"]
FINISHED = b"pass broadcast ("
"""The line the harness prints as the broadcast scenario ends (stdout is not a terminal)."""


async def _read_until(stream: trio.abc.ReceiveStream, marker: bytes) -> bytes:
    seen = b""
    while marker not in seen:
        chunk = await stream.receive_some()
        assert chunk, f"the harness ended before printing {marker!r}: {seen!r}"
        seen += chunk
    return seen


async def _read_all(stream: trio.abc.ReceiveStream, into: list[bytes]) -> None:
    while chunk := await stream.receive_some():
        into.append(bytes(chunk))


async def test_sigint_mid_run_gives_the_partial_report_and_exit_130(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    command = [*HARNESS, "--scenario", "broadcast", "--scenario", "churn", "--duration", "60"]
    command += ["--clients", "4", "--transport", "tcp", "--json", str(path)]
    command += ["--messages", "3"]  # --duration is churn's only: broadcast stays short
    with trio.fail_after(60):
        process = await trio.lowlevel.open_process(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert process.stdout is not None
        assert process.stderr is not None
        out = [await _read_until(process.stdout, FINISHED)]
        process.send_signal(signal.SIGINT)  # churn has 60 s to go: it is cut short
        err: list[bytes] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_all, process.stdout, out)
            nursery.start_soon(_read_all, process.stderr, err)
        code = await process.wait()
    stdout, stderr = b"".join(out).decode(), b"".join(err).decode()
    assert code == 130, stdout + stderr
    assert stderr.count("\n") == 1, stderr
    assert stderr == "harness: interrupted during scenario churn (1 of 2 scenarios finished)\n"
    assert "Traceback" not in stdout + stderr
    assert "\x1b" not in stdout  # no progress bar or colour codes when stdout is a pipe
    assert "harness: summary" in stdout
    assert "INTERRUPTED" in stdout.splitlines()[-1]
    report = json.loads(path.read_text())
    assert report["interrupted"] == {"signal": "SIGINT", "during": "churn"}
    assert report["exit_code"] == 130
    assert report["passed"] is False
    assert [s["name"] for s in report["scenarios"]] == ["broadcast"]
    assert report["scenarios"][0]["passed"] is True


def test_interruption_before_any_scenario_says_so() -> None:

    report = Report("t", 3, {"scenarios": "broadcast,churn"})
    report.interrupted = Interruption("SIGTERM", 15, None)
    assert report.exit_code == 143
    assert interruption_line(report) == (
        "stopped by SIGTERM before the first scenario (0 of 2 scenarios finished)"
    )


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if os.path.exists(f"/proc/{pid}")]


async def test_ctrl_c_during_a_sharded_broadcast_stops_the_workers_too() -> None:
    """Ctrl-C reaches the whole foreground process group, even while workers start: they are
    in sessions of their own, and the harness stops them."""
    command = [*HARNESS, "--scenario", "broadcast", "--clients", "6", "--workers", "2"]
    command += ["--rate", "5", "--duration", "60", "--transport", "tcp"]
    with trio.fail_after(60):
        process = await trio.lowlevel.open_process(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
        workers: list[int] = []
        while len(workers) < 2:  # the two worker processes are up
            await trio.sleep(0.05)
            workers = _children(process.pid)
        os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        assert process.stderr is not None
        err = b""
        while chunk := await process.stderr.receive_some():
            err += chunk
        code = await process.wait()
    assert code == 130, err
    assert err == b"harness: interrupted during scenario broadcast (0 of 1 scenarios finished)\n"
    assert _alive(workers) == []


async def test_a_worker_that_dies_fails_the_scenario_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    command = [*HARNESS, "--scenario", "broadcast", "--clients", "6", "--workers", "2"]
    command += ["--rate", "5", "--duration", "60", "--transport", "tcp", "--json", str(path)]
    with trio.fail_after(60):
        process = await trio.lowlevel.open_process(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        workers: list[int] = []
        while len(workers) < 2:
            await trio.sleep(0.05)
            workers = _children(process.pid)
        os.kill(workers[1], signal.SIGKILL)
        assert process.stderr is not None
        err = b""
        while chunk := await process.stderr.receive_some():
            err += chunk
        code = await process.wait()
    assert code == 1, err
    assert b"Traceback" not in err
    checks = json.loads(path.read_text())["scenarios"][0]["checks"]
    crash = next(check for check in checks if check["name"] == "ran to completion")
    assert crash["status"] == "fail"
    assert "WorkerFailed" in crash["observed"]
    assert "exit status -9" in crash["observed"]
