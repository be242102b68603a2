"""The command line as a person meets it: exit status, one-line errors, the JSON report."""

from __future__ import annotations

import json
import re
import resource
import sys
from pathlib import Path

import pytest
import trio

from harness.cli import main, raise_open_files
from harness.context import Context
from harness.options import Options
from harness.runner import run_harness, with_seed

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
    assert (
        err.strip()
        == "harness: 'http://example.invalid': use ws://, wss://, tcp:// or tls://HOST:PORT"
    )


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
    seed = report["settings"]["seed"]
    assert isinstance(seed, int)  # no --seed: the one picked is recorded, and how to replay it
    assert f"seed {seed} (replay with --seed {seed})" in out.splitlines()[-1]
    assert re.fullmatch(r"h[0-9a-f]{4}", report["run_id"])
    assert report["interrupted"] is None
    assert report["passed"] is True
    assert report["exit_code"] == 0
    assert [s["name"] for s in report["scenarios"]] == ["broadcast", "churn"]
    broadcast = report["scenarios"][0]
    assert {c["status"] for c in broadcast["checks"]} == {"pass"}
    assert broadcast["figures"]["deliveries"] == 4 * 3 * 4
    assert broadcast["figures"]["p99_ms"] >= broadcast["figures"]["p50_ms"] > 0
    assert broadcast["figures"]["harness_lines_per_read"] >= 1  # its lean clients' reads
    cost = broadcast["figures"]["harness_cpu_us_per_delivery"]
    assert 0 <= broadcast["figures"]["harness_kernel_us_per_delivery"] <= cost
    assert report["seed"] == seed
    assert report["workers"] == report["settings"]["workers"] >= 1
    for scenario in report["scenarios"]:  # what the harness itself spent, on every scenario
        figures = scenario["figures"]
        assert figures["harness_cpu_us_per_delivery"] > 0, scenario["name"]
        assert 0 < figures["harness_cpu_share"] <= 1, scenario["name"]


async def test_the_own_servers_lines_are_marked_and_its_warnings_wait_for_verbose() -> None:
    # abuse makes the harness's own server refuse connections, which it logs as a warning.
    abuse = ("--clients", "1", "--scenario", "abuse", "--seed", "1", "--quiet")
    code, out, err = await _run(*abuse)
    assert code == 0, out + err
    assert err == ""
    code, out, err = await _run(*abuse, "--verbose")
    assert code == 0, out + err
    lines = err.splitlines()
    # Which limit refuses first (--connect-rate, --max-connections-per-ip) depends on timing.
    assert "server: warning: refusing connections: 127.0.0.1 " in err
    assert all(line.startswith("server: ") for line in lines), lines


def test_open_files_limit_caps_clients() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    options, notes = raise_open_files(Options(clients=10**8))
    now, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert now == hard
    assert options.clients < 10**8
    assert any("caps clients at" in note for note in notes)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# --- the seed ------------------------------------------------------------------------------


async def test_a_run_without_seed_records_the_one_it_used() -> None:
    report = await run_harness(Options(scenarios=()))
    assert isinstance(report.settings["seed"], int)
    assert with_seed(Options(seed=-7)).seed == -7


def test_the_same_seed_makes_the_same_choices_whatever_else_runs() -> None:
    def draws(seed: int, scenario: str, *others: str) -> list[float]:
        ctx = Context(Options(seed=seed, scenarios=(*others, scenario)))
        rng = ctx.rng(scenario)
        return [rng.random() for _ in range(3)]

    assert draws(5, "resume") == draws(5, "resume", "broadcast", "disconnect")
    assert draws(5, "resume") != draws(6, "resume")
    assert draws(5, "resume") != draws(5, "disconnect")


# --- refused command lines ------------------------------------------------------------------

UNREACHABLE = ["--url", "tcp://127.0.0.1:1"]
"""Keeps a case quick should it wrongly be accepted: the run stops at the probe."""


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--clients", "0", *UNREACHABLE], "--clients"),
        (["--clients", "4", *UNREACHABLE], "--clients"),  # broken_pipe needs 5
        (["--clients", "2", "--scenario", "disconnect", *UNREACHABLE], "--clients"),
        (["--messages", "0", *UNREACHABLE], "--messages"),
        (["--messages", "1.5", *UNREACHABLE], "--messages"),
        (["--rate", "0.01", *UNREACHABLE], "--rate"),
        (["--rate", "nan", *UNREACHABLE], "--rate"),
        (["--duration", "0", *UNREACHABLE], "--duration"),
        (["--duration", "inf", *UNREACHABLE], "--duration"),
        (["--settle", "0.5", *UNREACHABLE], "--settle"),
        (["--evict-within", "-1", *UNREACHABLE], "--evict-within"),
        (["--seed", "1.5", *UNREACHABLE], "--seed"),
        (["--json", "/", *UNREACHABLE], "--json"),
        (["--html", "/", *UNREACHABLE], "--html"),
        (["--html", "/no/such/folder/r.html", *UNREACHABLE], "--html"),
        (["--workers", "0", *UNREACHABLE], "--workers"),
        (["--password-env", "TRIOCHAT_TEST_NO_SUCH_VARIABLE", *UNREACHABLE], "--password-env"),
        (["--clients", "1", "--scenario", "security", *UNREACHABLE], "--clients"),
        (["--transport", "tcp", *UNREACHABLE], "--transport"),
        (["--transport", "ws", *UNREACHABLE], "--transport"),  # the default, given: still refused
        (["--url", "ws://[::1"], "ws://[::1"),
        (["--url", "ws://[zz]:5000"], "ws://[zz]:5000"),
    ],
)
def test_a_value_that_cannot_work_is_one_line_naming_the_flag(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code  # type: ignore[assignment]
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1, err
    assert err.startswith("harness: ")
    assert flag in err
