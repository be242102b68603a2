"""``abuse`` against the harness's own server: every attack meets its bound, on both transports
and both WebSocket engines, and every check the scenario promises is there and passes.

(``test_scenarios`` leaves ``abuse`` to this file, which names each check.)
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import trio

from harness.options import Options
from harness.runner import run_harness
from triochat.server.config import WsEngine

CHECKS = {
    "all connected",
    "heap filled",
    "history flood: hoarders evicted",
    "history flood: memory bounded",
    "resume amplification: server keeps serving",
    "resume amplification: memory bounded",
    "nested JSON: bad_json, session goes on",
    "room churn: held back",
    "connection flood: excess refused",
} | {
    f"{attack}: innocent unaffected"
    for attack in (
        "history flood",
        "resume amplification",
        "nested JSON",
        "room churn",
        "connection flood",
    )
}


@pytest.mark.parametrize(
    ("transport", "engine"),
    [("tcp", "trio-websocket"), ("ws", "trio-websocket"), ("ws", "wsproto")],
    ids=["tcp", "ws", "ws-wsproto"],
)
async def test_abuse_passes_on_own_server(transport: str, engine: WsEngine) -> None:
    options = Options(
        clients=1, scenarios=("abuse",), transport=transport, ws_engine=engine, quiet=True, seed=1
    )
    with trio.fail_after(30):
        report = await run_harness(replace(options, settle=5.0, evict_within=10.0))
    (result,) = report.scenarios
    statuses = {c.name: c.passed for c in result.checks}
    assert statuses == dict.fromkeys(CHECKS, True), [
        f"{c.name}: {c.observed}" for c in result.checks if c.passed is not True
    ]
    assert isinstance(result.figures["churn_rooms_created"], int)
