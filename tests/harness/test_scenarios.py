"""Every scenario at small N, on both transports, against a healthy server: all checks pass."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import trio
import trustme

from harness.fleet import Unreachable
from harness.model import Report
from harness.options import SCENARIOS, Options
from harness.runner import run_harness
from tests.redisd import needs_redis
from tests.server.nodes import run_nodes
from triochat.client import open_client
from triochat.protocol.events import HistoryPage, Left, Members
from triochat.server import Server, ServerConfig, serve

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


@pytest.mark.parametrize("transport", ["ws", "tcp"])
@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s != "abuse"])  # test_abuse.py
async def test_scenario_passes_on_own_server(scenario: str, transport: str) -> None:
    options = replace(SMALL, scenarios=(scenario,), transport=transport, seed=1)
    with trio.fail_after(60):
        report = await run_harness(options)
    assert failures(report) == []
    assert report.exit_code == 0
    (result,) = report.scenarios
    assert result.name == scenario
    assert len(result.checks) >= 2


async def test_mixed_transports_against_a_running_server(nursery: trio.Nursery) -> None:
    """``--url`` twice: clients spread over the ws and tcp listeners of one server.

    Afterwards the shared server holds nobody of the run, and every client that
    was not meant to vanish left its rooms with ``quit`` (see docs/harness.md,
    "What a run leaves behind on a server").
    """
    # The whole room log is replayed on join, so the observer below sees every event.
    config = ServerConfig(port=0, tcp_port=0, history_limit=10_000)
    server: Server = await nursery.start(serve, config)
    options = replace(SMALL, urls=(server.url("ws"), server.url("tcp")))
    with trio.fail_after(60):
        report = await run_harness(options)
    assert failures(report) == []
    assert [s.name for s in report.scenarios] == list(SCENARIOS)
    broadcast = report.scenarios[0]
    assert broadcast.figures["deliveries"] == 6 * 4 * 6
    rooms = [f"{report.run_id}-{name}" for name in SCENARIOS] + [
        f"{report.run_id}-slow_reader-bulk"
    ]
    with trio.fail_after(10):
        left = await look_behind(server.url("tcp"), rooms)
    assert left.online == ["observer"]
    assert left.members == {room: ["observer"] for room in rooms}
    assert left.last_reasons, "no harness client left any room"
    assert {r for nick, r in left.last_reasons.items() if not VANISH.search(nick)} == {"quit"}
    server.stop()


VANISH = re.compile(r"-(v\d+|w\d+x\d+|stalled|bad\d+)$")
"""Clients whose way out is what their scenario tests (resets, churn, eviction, too_large)."""


@dataclass
class LeftBehind:
    online: list[str] = field(default_factory=list)
    members: dict[str, list[str]] = field(default_factory=dict)
    last_reasons: dict[str, str] = field(default_factory=dict)
    """Each nick's last ``left`` reason in any room (rooms of one run never share nicks)."""


async def look_behind(url: str, rooms: list[str]) -> LeftBehind:
    """Join ``rooms`` as ``observer``: their members, their whole logs, and who is online."""
    seen = LeftBehind()
    async with open_client(url, "observer", rooms=rooms) as client:
        while len(seen.members) < len(rooms):
            event = await client.receive()
            if isinstance(event, HistoryPage):
                for past in event.events:
                    if isinstance(past, Left):
                        seen.last_reasons[past.nick] = past.reason
            elif isinstance(event, Members) and event.room is not None:
                seen.members[event.room] = event.nicks
        await client.who()
        while not seen.online:
            event = await client.receive()
            if isinstance(event, Members) and event.room is None:
                seen.online = event.nicks
    return seen


async def test_every_scenario_over_wss_and_tls_with_the_run_s_cafile(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """``--url wss://… --url tls://… --cafile``: the fleet and the raw clients speak TLS,
    trusting that CA; without it the run cannot reach the server."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    pem = tmp_path / "server.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    config = ServerConfig(port=0, tcp_port=0, certfile=str(pem), keyfile=str(pem))
    server: Server = await nursery.start(serve, config)
    options = replace(SMALL, urls=(server.url("wss"), server.url("tls")))
    with trio.fail_after(90):
        with pytest.raises(Unreachable, match="certificate is not trusted"):
            await run_harness(options)
        report = await run_harness(replace(options, cafile=str(tmp_path / "ca.pem")))
    assert failures(report) == []
    assert [s.name for s in report.scenarios] == list(SCENARIOS)


async def test_security_fails_against_a_server_that_lets_any_origin_in(
    nursery: trio.Nursery,
) -> None:
    """The scenario's Origin check can fail: ``--allowed-origin '*'`` lets evil.example in,
    while the account checks, which that setting does not touch, still pass."""
    config = ServerConfig(port=0, tcp_port=0, allowed_origins=("*",))
    server: Server = await nursery.start(serve, config)
    options = replace(SMALL, scenarios=("security",), urls=(server.url("ws"),), seed=1)
    with trio.fail_after(60):
        report = await run_harness(options)
    (result,) = report.scenarios
    verdicts = {check.name: check.passed for check in result.checks}
    assert verdicts["foreign origin refused"] is False
    assert verdicts["registered nick protected"] is True
    assert report.exit_code == 1
    server.stop()


async def test_security_registers_its_owner_with_the_password_it_is_given(
    nursery: trio.Nursery,
) -> None:
    """``--password-env``'s password is the account's: it logs in after the run."""
    server: Server = await nursery.start(serve, ServerConfig(port=0, tcp_port=0))
    options = replace(
        SMALL, scenarios=("security",), urls=(server.url("tcp"),), password="given secret", seed=1
    )
    with trio.fail_after(60):
        report = await run_harness(options)
        assert failures(report) == []
        owner = f"{report.run_id}-securi-owner"
        async with open_client(server.url("tcp"), owner, password="given secret") as client:
            assert client.welcome is not None
    server.stop()


@needs_redis
async def test_every_scenario_passes_across_three_nodes() -> None:
    """Three ``--redis`` nodes, the harness's clients spread over all of them (``--url``
    each, both transports): one order per room, and everything else one server
    promises (docs/scaling.md)."""
    config = ServerConfig(host="127.0.0.1", port=0, tcp_port=0)
    async with run_nodes(config) as nodes:
        urls = (
            nodes.servers[0].url("ws"),
            nodes.servers[1].url("ws"),
            nodes.servers[2].url("tcp"),
        )
        wanted = tuple(s for s in SCENARIOS if s != "abuse")  # 11 s of its own timers
        options = replace(SMALL, urls=urls, scenarios=wanted, seed=1)
        with trio.fail_after(120):
            report = await run_harness(options)
    assert failures(report) == []
    assert report.exit_code == 0
    assert [s.name for s in report.scenarios] == list(wanted)


@needs_redis
async def test_broadcast_through_workers_spreads_clients_evenly_over_nodes() -> None:
    """Several ``--url``s of nodes sharing one Redis, clients in two worker processes:
    each node gets its even share, and every receiver on every node gets every message."""
    config = ServerConfig(host="127.0.0.1", port=0, tcp_port=0)
    async with run_nodes(config) as nodes:
        urls = (nodes.servers[0].url("ws"), nodes.servers[1].url("tcp"), nodes.servers[2].url("ws"))
        options = replace(SMALL, urls=urls, scenarios=("broadcast",), workers=2, seed=1)
        with trio.fail_after(60):
            report = await run_harness(options)
    assert failures(report) == []
    spread = report.scenarios[0].figures["connected_per_url"]
    assert spread == ", ".join(f"{url}: 2" for url in urls)


async def test_bad_input_through_workers_sends_past_the_announced_max_line(
    nursery: trio.Nursery,
) -> None:
    """The oversized line is sized from the ``welcome`` the shards' members got: against a
    server whose ``max_line`` is three times the default, a guessed size would be accepted
    and no ``too_large`` would come."""
    config = ServerConfig(port=0, tcp_port=0, max_line=3 * 64 * 1024)
    server: Server = await nursery.start(serve, config)
    options = replace(SMALL, urls=(server.url("tcp"),), scenarios=("bad_input",), workers=2)
    with trio.fail_after(60):
        report = await run_harness(replace(options, seed=1))
    assert failures(report) == []
    assert report.scenarios[0].figures["workers"] == 2
