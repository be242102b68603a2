"""Prometheus metrics: plain integers on the hot path, read when someone scrapes.

A ``Counter.inc()`` per delivery would cost about as much as the delivery, so the
server counts in :class:`Stats` (an attribute add, once per fan-out, not per
recipient) and :class:`Collector` turns those counts, and what the server holds
right now (connections by transport, rooms, memory budgets), into metric families
at scrape time, in the server's own Trio thread: nothing is read while it changes.

``/metrics`` is served on its own listener (``--metrics-port``, on 127.0.0.1 by
default): a GET of that path gets the text format, anything else 404. One request
per connection, each bounded in size and time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector as Base

from triochat.server.outbox import DELAY_BOUNDS

if TYPE_CHECKING:
    from triochat.server.app import Server

PATH = b"/metrics"
MAX_REQUEST = 8192
"""Bytes of a request's head the metrics listener reads before it gives up on it."""
REQUEST_TIMEOUT = 5.0
SCRAPES_AT_ONCE = 8
"""Connections the metrics listener serves at once; more wait to be accepted."""


@dataclass
class Stats:
    """What the server counts as it goes; :class:`Collector` reads it."""

    events_in: int = 0
    """Client events decoded and within the rate."""
    evictions: int = 0
    rate_limited: int = 0
    """Events refused for the client's rate (``rate_limited``)."""
    sessions_started: int = 0
    sessions_ended: Counter[str] = field(default_factory=Counter)
    """By reason (the left reason, or the error code that ended the session)."""
    refused: Counter[str] = field(default_factory=Counter)
    """Connections refused before a session, by limit."""


class Collector(Base):
    """The ``triochat_*`` families of one server, made at each scrape."""

    def __init__(self, server: Server) -> None:
        self._server = server

    def collect(self) -> Iterator[Metric]:
        server = self._server
        stats = server.stats
        connections = GaugeMetricFamily(
            "triochat_connections", "Connections with a session, by transport", labels=["transport"]
        )
        sessions = server.sessions()
        counts = Counter({url.partition(":")[0]: 0 for url in server.urls})  # every listener's
        counts.update(session.transport for session in sessions)
        for transport, count in sorted(counts.items()):
            connections.add_metric([transport], count)
        yield connections
        waiting = [session.outbox_bytes for session in sessions]
        yield GaugeMetricFamily(
            "triochat_outbox_bytes", "Bytes waiting to be written, all clients", sum(waiting)
        )
        yield GaugeMetricFamily(
            "triochat_outbox_bytes_max",
            "Bytes waiting for the client with most",
            max(waiting, default=0),
        )
        yield GaugeMetricFamily(
            "triochat_outbox_bytes_limit",
            "What one client may have waiting (--outbox-bytes)",
            value=server.config.outbox_bytes,
        )
        yield _counter("triochat_sessions_started", "Sessions welcomed", stats.sessions_started)
        ended = CounterMetricFamily(
            "triochat_sessions_ended", "Sessions ended, by reason", labels=["reason"]
        )
        for reason, count in sorted(stats.sessions_ended.items()):
            ended.add_metric([reason], count)
        yield ended
        refused = CounterMetricFamily(
            "triochat_connections_refused", "Connections refused by a limit", labels=["limit"]
        )
        for limit, count in sorted(stats.refused.items()):
            refused.add_metric([limit], count)
        yield refused
        yield _counter("triochat_events_in", "Client events accepted", stats.events_in)
        yield _counter("triochat_deliveries", "Lines queued for clients", server.hub.deliveries)
        yield _counter("triochat_evictions", "Clients evicted for not reading", stats.evictions)
        yield _counter(
            "triochat_rate_limited", "Client events refused for the rate", stats.rate_limited
        )
        hub = server.hub
        yield GaugeMetricFamily("triochat_rooms", "Rooms with members", value=hub.active_rooms)
        yield GaugeMetricFamily(
            "triochat_rooms_in_memory", "Rooms held in memory, idle ones too", hub.rooms_in_memory
        )
        yield GaugeMetricFamily(
            "triochat_history_bytes", "Memory the rooms' history takes", value=hub.history_bytes
        )
        yield GaugeMetricFamily(
            "triochat_history_bytes_limit",
            "Its budget (--history-bytes)",
            value=server.config.history_bytes,
        )
        yield _fanout(server)
        yield from _history(server)
        yield from _redis(server)
        yield GaugeMetricFamily(
            "triochat_connections_limit",
            "The server's connection limit",
            value=server.limits.max_connections,
        )


def _fanout(server: Server) -> HistogramMetricFamily:
    """Bursts, by how long they took from the flusher's wake-up to their writes."""
    delays = server.flusher.delays
    buckets, seen = [], 0
    for bound, count in zip([*map(str, DELAY_BOUNDS), "+Inf"], delays.counts, strict=True):
        seen += count
        buckets.append((bound, seen))
    return HistogramMetricFamily(
        "triochat_fanout_seconds",
        "From the flusher's wake-up to a burst's writes (settling, a commit, the writes)",
        buckets=buckets,
        sum_value=delays.total,
    )


def _history(server: Server) -> Iterator[Metric]:
    store = server.store
    if store is not None:
        yield _counter("triochat_history_commits", "History groups saved", store.commits)
        yield _counter(
            "triochat_history_commit_seconds", "Seconds spent saving them", store.commit_seconds
        )


def _redis(server: Server) -> Iterator[Metric]:
    relay = server.relay
    if relay is None:
        return
    yield GaugeMetricFamily(
        "triochat_redis_up", "Whether Redis answered the last heartbeat", value=int(relay.healthy)
    )
    yield _counter("triochat_redis_batches", "Pipelined batches sent to Redis", relay.batches)
    yield _counter("triochat_redis_calls", "Calls in them (a room's burst is one)", relay.calls)
    yield _counter(
        "triochat_redis_gap_reads", "Stream reads of events pub/sub missed", relay.gap_reads
    )


def _counter(name: str, text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, text, value=value)


def registry_for(server: Server) -> CollectorRegistry:
    """The server's metrics and its process's (CPU, memory, descriptors)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(server))
    ProcessCollector(namespace="triochat", registry=registry)
    return registry


async def serve_metrics(listener: trio.SocketListener, registry: CollectorRegistry) -> None:
    """Answer scrapes on ``listener`` until cancelled."""
    limiter = trio.Semaphore(SCRAPES_AT_ONCE)
    async with trio.open_nursery() as nursery:
        while True:
            await limiter.acquire()
            try:
                stream = await listener.accept()
            except BaseException:
                limiter.release()
                raise
            nursery.start_soon(_scrape, stream, registry, limiter)


async def _scrape(
    stream: trio.SocketStream, registry: CollectorRegistry, limiter: trio.Semaphore
) -> None:
    try:
        async with stream:
            with trio.move_on_after(REQUEST_TIMEOUT):
                head = await _head(stream)
                if head is None:
                    return
                target = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b""
                if head.startswith(b"GET ") and target.partition(b"?")[0] == PATH:
                    await _answer(stream, b"200 OK", CONTENT_TYPE_LATEST, generate_latest(registry))
                else:
                    await _answer(stream, b"404 Not Found", "text/plain", b"see /metrics\n")
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        limiter.release()


async def _head(stream: trio.SocketStream) -> bytes | None:
    """The request's first line, once its head has come; None if it never does."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_REQUEST:
            return None
        chunk = await stream.receive_some(MAX_REQUEST)
        if not chunk:
            return None
        data += chunk
    return data.partition(b"\r\n")[0]


async def _answer(stream: trio.SocketStream, status: bytes, kind: str, body: bytes) -> None:
    head = (
        b"HTTP/1.1 "
        + status
        + b"\r\nContent-Type: "
        + kind.encode()
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\nConnection: close\r\n\r\n"
    )
    await stream.send_all(head + body)
