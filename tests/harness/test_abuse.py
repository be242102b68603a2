"""``abuse`` against the harness's own server: every attack meets its bound, on both transports,
and every check the scenario promises is there and passes; and the room churn check fails on a
server that limits each connection's events but not an address's joins.

(``test_scenarios`` leaves ``abuse`` to this file, which names each check.)
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import trio

from harness.context import OWN_SERVER
from harness.options import Options
from harness.runner import run_harness
from harness.scenarios.abuse import CHURN_BOUND, CHURN_ROOMS

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


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_abuse_passes_on_own_server(transport: str) -> None:
    options = Options(clients=1, scenarios=("abuse",), transport=transport, quiet=True, seed=1)
    with trio.fail_after(30):
        report = await run_harness(replace(options, settle=5.0, evict_within=10.0))
    (result,) = report.scenarios
    statuses = {c.name: c.passed for c in result.checks}
    assert statuses == dict.fromkeys(CHECKS, True), [
        f"{c.name}: {c.observed}" for c in result.checks if c.passed is not True
    ]
    created = result.figures["churn_rooms_created"]
    assert isinstance(created, int)
    assert 0 < created < CHURN_BOUND
    connections = result.figures["churn_connections"]
    assert isinstance(connections, int)
    assert connections > 1  # it reconnected: one connection's flood burst would hold it


async def test_room_churn_fails_without_a_per_address_join_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With only the per-connection flood limit (as before the per-address join bucket), the
    reconnecting churner makes every room it asks for, and the room churn check fails."""
    unlimited = {**OWN_SERVER["abuse"], "join_rate": 0.0}  # 0: joins unlimited
    monkeypatch.setitem(OWN_SERVER, "abuse", unlimited)
    options = Options(clients=1, scenarios=("abuse",), transport="tcp", quiet=True, seed=1)
    with trio.fail_after(30):
        report = await run_harness(replace(options, settle=5.0, evict_within=10.0))
    (result,) = report.scenarios
    (churn,) = [c for c in result.checks if c.name == "room churn: held back"]
    assert churn.passed is False, churn.observed
    assert result.figures["churn_rooms_created"] == CHURN_ROOMS
    assert "0 rate_limited" in churn.observed
