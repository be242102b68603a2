"""Each scenario fails loudly against a server that breaks what it proves.

The "server" is a real one behind :class:`~tests.harness.proxy.FaultyProxy`.
A transparent proxy passes every scenario (first test), so each failure below
is the fault's doing, and the test names the check that must catch it.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from harness.model import Report
from harness.options import SCENARIOS, Options
from harness.registry import SHARDED
from harness.runner import run_harness
from tests.harness.proxy import Faults, FaultyProxy
from triochat.server import Server, ServerConfig, serve

FAST = Options(
    clients=5, messages=4, rate=300.0, duration=0.3, settle=0.5, evict_within=1.0, quiet=True
)
"""Small and short. A faulty run's time is mostly waiting out ``settle`` (or ``evict_within``)
for what the fault withholds, so these bound each test's time; a healthy run needs a small
part of them (eviction in well under 0.1 s, delivery in milliseconds, even with the CPUs
oversubscribed), and the transparent proxy passing with the same options shows that each
failure below is the fault's, not a deadline's."""
SERVER = ServerConfig(port=None, tcp_port=0, outbox_bytes=256 * 1024)


async def _proxied(nursery: trio.Nursery, faults: Faults) -> str:
    server: Server = await nursery.start(serve, SERVER)
    proxy = FaultyProxy(server.url("tcp"), faults)
    url: str = await nursery.start(proxy.serve)
    return url


def describe(report: Report) -> str:
    return "\n".join(
        f"{s.name}/{c.name}: {c.passed} {c.observed}" for s in report.scenarios for c in s.checks
    )


def failed_checks(report: Report) -> set[str]:
    return {c.name for s in report.scenarios for c in s.checks if c.passed is False}


async def test_transparent_proxy_passes_everything(nursery: trio.Nursery) -> None:
    url = await _proxied(nursery, Faults())
    with trio.fail_after(60):
        report = await run_harness(replace(FAST, urls=(url,), seed=3))
    assert failed_checks(report) == set(), describe(report)
    assert report.exit_code == 0
    assert [s.name for s in report.scenarios] == list(SCENARIOS)


BROKEN = [
    pytest.param(Faults(drop_counted=7), "broadcast", "exactly once", id="drops-a-message"),
    pytest.param(Faults(duplicate_counted=7), "broadcast", "exactly once", id="duplicates"),
    pytest.param(Faults(swap_counted=7), "broadcast", "in order", id="reorders"),
    pytest.param(Faults(drop_left=True), "disconnect", "one left{quit} each", id="no-left-quit"),
    pytest.param(
        Faults(keep_upstream=True),
        "broken_pipe",
        "one left{disconnected} each",
        id="misses-resets",
    ),
    pytest.param(
        Faults(unbounded=True), "slow_reader", "stalled reader evicted", id="never-evicts"
    ),
    pytest.param(
        Faults(serialize=True), "slow_reader", "stalled: exactly once", id="fan-out-awaits-all"
    ),
    pytest.param(Faults(drop_errors=True), "flood", "flooder held back", id="no-rate-limit"),
    pytest.param(
        Faults(drop_errors=True), "bad_input", "documented error codes", id="no-error-codes"
    ),
    pytest.param(Faults(keep_upstream=True), "churn", "no leaked members", id="leaks-sessions"),
    pytest.param(
        Faults(history="duplicate_event"), "resume", "exactly once", id="replays-a-duplicate"
    ),
    pytest.param(Faults(history="drop_event"), "resume", "in order", id="replay-has-a-gap"),
    pytest.param(Faults(history="drop"), "resume", "replay before live", id="no-replay"),
]


@pytest.mark.parametrize(("faults", "scenario", "check"), BROKEN)
async def test_broken_server_fails_the_scenario(
    nursery: trio.Nursery, faults: Faults, scenario: str, check: str
) -> None:
    url = await _proxied(nursery, faults)
    with trio.fail_after(60):
        report = await run_harness(replace(FAST, urls=(url,), scenarios=(scenario,), seed=3))
    assert check in failed_checks(report), describe(report)
    assert report.exit_code == 1


THROUGH_WORKERS = tuple(sorted(SHARDED))
BROKEN_FAN_OUT = [param for param in BROKEN if param.values[1] in THROUGH_WORKERS]


async def test_transparent_proxy_passes_through_workers(nursery: trio.Nursery) -> None:
    url = await _proxied(nursery, Faults())
    with trio.fail_after(60):
        report = await run_harness(
            replace(FAST, urls=(url,), scenarios=THROUGH_WORKERS, workers=2, seed=3)
        )
    assert failed_checks(report) == set(), describe(report)
    assert {s.name: s.figures["workers"] for s in report.scenarios} == dict.fromkeys(SHARDED, 2)
    others = FAST.clients - 1  # every member but the stalled one, over both workers
    (slow,) = [s for s in report.scenarios if s.name == "slow_reader"]
    told = {c.name: c.observed for c in slow.checks}["eviction told once"]
    assert told == f"{others}/{others} saw exactly one"
    (broken,) = [s for s in report.scenarios if s.name == "broken_pipe"]
    lefts = {c.name: c.observed for c in broken.checks}["one left{disconnected} each"]
    assert lefts == "3 departed x 2 stayers: 0 wrong"  # 5 clients: 3 vanish, one stayer a worker
    (churn,) = [s for s in report.scenarios if s.name == "churn"]
    balance = {c.name: c.observed for c in churn.checks}["joins and leaves balance"]
    assert re.fullmatch(r"\d+ churned x 4 stable: 0 wrong", balance)  # 1 churner, 3 + observer
    (resumed,) = [s for s in report.scenarios if s.name == "resume"]
    judged = {c.name: c.observed for c in resumed.checks}["exactly once"]
    assert " x 5 receivers:" in judged  # 3 stayers over the workers, 2 droppers here
    (cast,) = [s for s in report.scenarios if s.name == "broadcast"]
    per_read = cast.figures["harness_lines_per_read"]  # both workers' reads and lines, merged
    assert isinstance(per_read, float)
    assert per_read >= 1


@pytest.mark.parametrize(("faults", "scenario", "check"), BROKEN_FAN_OUT)
async def test_broken_server_fails_through_workers(
    nursery: trio.Nursery, faults: Faults, scenario: str, check: str
) -> None:
    """Each worker sees only its share of the receivers: the merged outcome must still fail."""
    url = await _proxied(nursery, faults)
    options = replace(FAST, urls=(url,), scenarios=(scenario,), workers=2, seed=3)
    with trio.fail_after(60):
        report = await run_harness(options)
    assert check in failed_checks(report), describe(report)
    assert report.exit_code == 1
    assert report.scenarios[0].figures["workers"] == 2


async def test_cli_exits_1_on_a_broken_server(nursery: trio.Nursery, tmp_path: Path) -> None:
    url = await _proxied(nursery, Faults(drop_counted=3))
    path = tmp_path / "report.json"
    command = [sys.executable, "-m", "harness", "--url", url, "--scenario", "broadcast"]
    command += ["--json", str(path)]
    command += ["--clients", "4", "--messages", "3", "--rate", "200", "--quiet"]
    command += ["--settle", "1"]  # the least the command line takes
    command += ["--workers", "2"]
    with trio.fail_after(60):
        done = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False
        )
    assert done.returncode == 1, done.stderr.decode()
    out = done.stdout.decode()
    assert "FAIL" in out
    assert "lost 1," in out
    report = json.loads(path.read_text())
    assert report["passed"] is False
    assert report["exit_code"] == 1
    checks = {c["name"]: c for c in report["scenarios"][0]["checks"]}
    assert checks["exactly once"]["status"] == "fail"
    assert "lost 1," in checks["exactly once"]["observed"]


async def _paced_broadcast(url: str) -> Report:
    """broadcast at 50 messages/s through ``url``: 3 clients, 30 messages each."""
    options = replace(
        FAST,
        urls=(url,),
        scenarios=("broadcast",),
        clients=3,
        messages=30,
        rate=50,
        settle=10,
        seed=3,
    )
    return await run_harness(options)


async def test_a_server_slower_than_the_rate_is_reported_as_falling_behind(
    nursery: trio.Nursery,
) -> None:
    """Latency grows through the run; every message still arrives, and the report says so."""
    url = await _proxied(nursery, Faults(lines_per_s=25))
    with trio.fail_after(60):
        report = await _paced_broadcast(url)
    broadcast = report.scenarios[0]
    assert failed_checks(report) == set(), describe(report)
    assert broadcast.figures["kept_up"] == "no", broadcast.figures
    assert any("latency grew" in note for note in broadcast.notes), broadcast.notes


async def test_a_server_that_keeps_up_is_not_reported_as_falling_behind(
    nursery: trio.Nursery,
) -> None:
    url = await _proxied(nursery, Faults())
    with trio.fail_after(60):
        report = await _paced_broadcast(url)
    assert report.scenarios[0].figures["kept_up"] == "yes", report.scenarios[0].figures


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_receiver_the_server_closes_is_written_off_not_waited_for(
    nursery: trio.Nursery, workers: int
) -> None:
    """A closed receiver gets nothing more: the phase ends without waiting out ``settle``
    for it (the bound below is far shorter), and the report says the server closed it."""
    url = await _proxied(nursery, Faults(close_after_counted=7))
    options = replace(
        FAST, urls=(url,), scenarios=("broadcast",), settle=600.0, workers=workers, seed=3
    )
    with trio.fail_after(60):
        report = await run_harness(options)
    (broadcast,) = report.scenarios
    observed = {c.name: c.observed for c in broadcast.checks}["exactly once"]
    assert "exactly once" in failed_checks(report), describe(report)
    assert observed.endswith("(the server closed 1 of them)"), observed
    closed = [note for note in broadcast.notes if "the server closed 1 of 5 receivers" in note]
    assert closed, broadcast.notes
