"""Every scenario at small N, on both transports, against a healthy server: all checks pass."""

from __future__ import annotations

from dataclasses import replace

import pytest
import trio

from harness.model import Report
from harness.options import SCENARIOS, Options
from harness.runner import run_harness
from triochat.server import Server, ServerConfig, serve
from triochat.server.config import WsEngine

SMALL = Options(
    clients=6, messages=4, rate=300.0, duration=1.0, settle=5.0, evict_within=10.0, quiet=True
)
"""Small and quick: 6 clients, 300 messages/s offered, one second of churn."""


def failures(report: Report) -> list[str]:
    return [
        f"{s.name}/{c.name}: {c.observed}"
        for s in report.scenarios
        for c in s.checks
        if c.passed is False
    ]


@pytest.mark.parametrize(
    ("transport", "engine"),
    [("ws", "trio-websocket"), ("ws", "wsproto"), ("tcp", "trio-websocket")],
    ids=["ws", "ws-wsproto", "tcp"],
)
@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_scenario_passes_on_own_server(
    scenario: str, transport: str, engine: WsEngine
) -> None:
    options = replace(SMALL, scenarios=(scenario,), transport=transport, ws_engine=engine, seed=1)
    with trio.fail_after(60):
        report = await run_harness(options)
    assert failures(report) == []
    assert report.exit_code == 0
    (result,) = report.scenarios
    assert result.name == scenario
    assert len(result.checks) >= 2


async def test_mixed_transports_against_a_running_server(nursery: trio.Nursery) -> None:
    """``--url`` twice: clients spread over the ws and tcp listeners of one server."""
    server: Server = await nursery.start(serve, ServerConfig(port=0, tcp_port=0))
    options = replace(SMALL, urls=(server.url("ws"), server.url("tcp")))
    with trio.fail_after(60):
        report = await run_harness(options)
    assert failures(report) == []
    assert [s.name for s in report.scenarios] == list(SCENARIOS)
    broadcast = report.scenarios[0]
    assert broadcast.figures["deliveries"] == 6 * 4 * 6
    server.stop()
