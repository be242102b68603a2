"""The command line as a person meets it: exit status, one-line errors, the JSON report."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import trio

from harness.cli import raise_open_files
from harness.options import Options

HARNESS = [sys.executable, "-m", "harness"]


async def _run(*args: str) -> tuple[int, str, str]:
    with trio.fail_after(60):
        done = await trio.run_process(
            [*HARNESS, *args], capture_stdout=True, capture_stderr=True, check=False
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_unreachable_server_is_one_line_and_exit_2() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))  # bound, never listening: connection refused
    port = listener.getsockname()[1]
    code, out, err = await _run("--url", f"tcp://127.0.0.1:{port}", "--quiet")
    listener.close()
    assert code == 2
    assert err.strip().count("\n") == 0
    assert "cannot reach the server" in err
    assert "refused" in err
    assert "Traceback" not in err + out


async def test_bad_url_is_usage_error() -> None:
    code, _, err = await _run("--url", "http://example.invalid", "--quiet")
    assert code == 2
    assert err.strip() == "harness: 'http://example.invalid': use ws://HOST:PORT or tcp://HOST:PORT"


async def test_bad_option_is_usage_error() -> None:
    code, _, err = await _run("--clients", "0")
    assert code == 2
    assert "--clients: 0 must be 1 or more" in err
    code, _, err = await _run("--scenario", "nope")
    assert code == 2
    assert "invalid choice" in err


async def test_passing_run_exits_0_and_writes_json(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    code, out, err = await _run(
        "--clients", "4", "--messages", "3", "--rate", "200", "--scenario", "broadcast",
        "--scenario", "churn", "--duration", "0.5", "--transport", "tcp", "--json", str(path),
    )  # fmt: skip
    assert code == 0, out + err
    assert "all checks passed" in out
    report = json.loads(path.read_text())
    assert report["passed"] is True
    assert report["exit_code"] == 0
    assert [s["name"] for s in report["scenarios"]] == ["broadcast", "churn"]
    broadcast = report["scenarios"][0]
    assert {c["status"] for c in broadcast["checks"]} == {"pass"}
    assert broadcast["figures"]["deliveries"] == 4 * 3 * 4
    assert broadcast["figures"]["p99_ms"] >= broadcast["figures"]["p50_ms"] > 0


def test_open_files_limit_caps_clients() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    options, notes = raise_open_files(Options(clients=10**8))
    now, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert now == hard
    assert options.clients < 10**8
    assert any("caps clients at" in note for note in notes)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
