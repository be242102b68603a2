"""``/metrics``: Prometheus text on its own listener, names starting ``triochat_``, read
from what the server counts and holds at the moment of the scrape."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.redisd import needs_redis
from tests.server.conftest import TEST_CONFIG
from tests.server.helpers import settle_join
from tests.server.nodes import run_nodes
from triochat.client import open_client
from triochat.server import Server, serve


async def _get(url: str, path: str) -> tuple[int, str]:
    host, _, port = url.removeprefix("http://").partition("/")[0].rpartition(":")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


async def _scrape(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    assert server.metrics_url is not None
    status, text = await _get(server.metrics_url, "/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_count_connections_sessions_and_deliveries(nursery: trio.Nursery) -> None:
    server: Server = await nursery.start(serve, replace(TEST_CONFIG, metrics_port=0))
    assert server.metrics_url is not None
    assert server.metrics_url.startswith("http://127.0.0.1:")
    with trio.fail_after(10):
        async with open_client(server.url("ws"), "ada") as ada:
            async with open_client(server.url("tcp"), "bob") as bob:
                await settle_join(bob)
                await ada.say("lobby", "hello")
                seen = await _scrape(server)
                assert seen["triochat_connections", (("transport", "ws"),)] == 1
                assert seen["triochat_connections", (("transport", "tcp"),)] == 1
                assert seen["triochat_rooms", ()] == 1
                assert seen["triochat_sessions_started_total", ()] == 2
                await bob.quit()
                async for _ in bob:
                    pass
            seen = await _scrape(server)  # bob's session ended before its goodbye reached it
    assert seen["triochat_sessions_ended_total", (("reason", "quit"),)] == 1
    assert seen["triochat_deliveries_total", ()] >= 4
    assert seen["triochat_evictions_total", ()] == 0
    assert seen["triochat_fanout_seconds_count", ()] >= 1
    assert (
        seen["triochat_fanout_seconds_bucket", (("le", "+Inf"),)]
        == seen["triochat_fanout_seconds_count", ()]
    )
    assert seen["triochat_outbox_bytes_max", ()] <= seen["triochat_outbox_bytes_limit", ()]
    assert seen["triochat_process_open_fds", ()] > 0
    assert all(name.startswith("triochat_") for name, _ in seen)
    assert (await _get(server.metrics_url, "/other"))[0] == 404


@asynccontextmanager
async def _alone_and_node(
    nursery: trio.Nursery, tmp_path: Path
) -> AsyncIterator[tuple[Server, Server]]:
    """A server with history on disk and a Redis node, each with /metrics and a session
    behind it."""
    stored = replace(TEST_CONFIG, metrics_port=0, db_path=str(tmp_path / "history.sqlite3"))
    alone: Server = await nursery.start(serve, stored)
    async with run_nodes(replace(TEST_CONFIG, metrics_port=0), count_=1) as nodes:
        with trio.fail_after(10):
            for server in (alone, nodes.servers[0]):
                async with open_client(server.url("tcp"), "ada") as ada:
                    await settle_join(ada)
        yield alone, nodes.servers[0]


@needs_redis
async def test_history_and_redis_have_their_own_metrics(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with _alone_and_node(nursery, tmp_path) as (alone, node):
        with trio.fail_after(10):
            seen, on_node = await _scrape(alone), await _scrape(node)
    assert seen["triochat_history_commits_total", ()] >= 1
    assert seen["triochat_history_commit_seconds_total", ()] > 0
    assert ("triochat_redis_up", ()) not in seen
    assert on_node["triochat_redis_up", ()] == 1
    assert on_node["triochat_redis_batches_total", ()] >= 1
    assert on_node["triochat_redis_calls_total", ()] >= on_node["triochat_redis_batches_total", ()]


DASHBOARD = Path(__file__).parents[2] / "docs" / "deploy" / "grafana-dashboard.json"


def _queried(dashboard: Path) -> set[str]:
    """The ``triochat_*`` series the dashboard's queries name."""
    panels = json.loads(dashboard.read_text())["panels"]
    exprs = [target["expr"] for panel in panels for target in panel["targets"]]
    return {name for expr in exprs for name in re.findall(r"\btriochat_[a-z_]+", expr)}


async def _exported(server: Server) -> set[str]:
    """Every series name ``server`` exports, a counter's included before its first count."""
    assert server.metrics_url is not None
    _, text = await _get(server.metrics_url, "/metrics")
    families = list(text_string_to_metric_families(text))
    counters = {f"{f.name}_total" for f in families if f.type == "counter"}
    return counters | {sample.name for family in families for sample in family.samples}


@needs_redis
async def test_the_grafana_dashboard_queries_only_series_the_server_exports(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with _alone_and_node(nursery, tmp_path) as (alone, node):
        with trio.fail_after(10):
            exported = await _exported(alone) | await _exported(node)
    missing = _queried(DASHBOARD) - exported
    assert not missing, f"the dashboard queries series nothing exports: {sorted(missing)}"
