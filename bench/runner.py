"""The bench's plan: which servers, which shapes, in which order, and the figures of each.

Every setup (a server, a transport, N clients) gets a fresh server process, so
RSS per connection is measured from a clean baseline and no shape inherits
another's heap. Setups are ordered so the figures that are compared (the peer
and triochat at the same N; history off and on) run next to each other.

A shape is measured between absolute instants on the machine's monotonic
clock: the orchestrator samples the server's CPU time at ``measure`` and
``end`` while the workers count deliveries between the same two instants.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import resource
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram

from bench import redis, servers
from bench.loadgen import (
    LATENCY_MAX_US,
    Endpoint,
    Fleet,
    HandshakeResult,
    HandshakeSpec,
    LoadgenError,
    Population,
    RunResult,
    RunSpec,
)
from bench.storm import Storm, measure_storm

ROOM = "bench"
IDLE_ROOM_SIZE = 10
RETRY_BUDGET = 8
"""Shapes measured a second time per run because other work disturbed their window."""
DISTURBED = 0.10
"""Share of a core taken by other work (or by steal) that makes a window suspect."""
FLOORS_UP_TO = 200
"""The largest N at which a target is set, and so the floors are measured."""
TLS_AT = 200
"""The N at which WebSocket over TLS is measured, beside plaintext WebSocket."""
FD_RESERVE = 64
"""Descriptors each process keeps for itself (listeners, pipes, logs, the SQLite file)."""


@dataclass(frozen=True)
class Settings:
    sizes: tuple[int, ...] = (50, 200, 1000)
    in_flight: tuple[int, ...] = (1, 8, 32)
    warmup: float = 0.5
    window: float = 2.0
    history_size: int = 200
    history_in_flight: tuple[int, ...] = (1, 8, 32)
    idle: int = 10_000
    handshake_window: float = 2.0
    handshake_parallel: int = 64
    sampled: int = 8
    """Receivers (besides the senders) that time every broadcast they get."""
    storm_clients: int = 2000
    """Clients of each join storm (bench/storm.py), one per :data:`STORM_TRANSPORTS` entry."""
    redis_clients: int = 200
    """N of the Redis section: the fan-out table's N=200 (its headline row is N=200, 32 in
    flight)."""


FULL = Settings()
QUICK = Settings(
    sizes=(200,),
    in_flight=(1, 32),
    warmup=0.3,
    window=1.5,
    history_in_flight=(32,),
    idle=2_000,
    handshake_window=1.0,
    storm_clients=500,
)


@dataclass(frozen=True)
class Setup:
    server: str
    """``triochat``, or a reference: ``websockets peer``, ``trio-websocket floor``,
    ``wsproto floor`` (see bench/peer.py, bench/floor.py, bench/wsproto_floor.py)."""
    transport: str
    history: bool = False

    @property
    def label(self) -> str:
        return f"{self.server} {self.transport}" + (" +history" if self.history else "")


PEER_WS = Setup("websockets peer", "ws")
FLOOR_WS = Setup("trio-websocket floor", "ws")
WSPROTO_WS = Setup("wsproto floor", "ws")
TRIO_WS = Setup(servers.TRIOCHAT, "ws")
TRIO_WSS = Setup(servers.TRIOCHAT, "wss")
"""WebSocket over TLS, beside the plaintext row at N=200 (see :data:`TLS_AT`)."""
TRIO_TCP = Setup(servers.TRIOCHAT, "tcp")
TRIO_WS_DB = Setup(servers.TRIOCHAT, "ws", history=True)
TRIO_TCP_DB = Setup(servers.TRIOCHAT, "tcp", history=True)
STORM_TRANSPORTS = ("tcp", "ws")
"""The join storm's rows, side by side: TCP, then WebSocket."""
REDIS_IN_FLIGHT = (32, 1)
"""The Redis section's shapes: the fan-out table's 32 in flight (its headline row), then 1."""
STANDALONE = "standalone"
METRICS = "standalone, /metrics scraped every second"
ONE_NODE = "1 node --redis"
TWO_NODES = "2 nodes --redis"
REDIS_SETUPS = ((STANDALONE, 0), (METRICS, 0), (ONE_NODE, 1), (TWO_NODES, 2))
"""The Redis section's setups, side by side: name, and how many ``--redis`` nodes. The
second is the standalone server with ``--metrics-port`` and a scraper: what metrics cost."""
SCRAPE_EVERY_S = 1.0
"""How often the metrics row's scraper asks (Prometheus's default is every 15 s)."""


@dataclass
class Row:
    """One shape: a setup at N clients with K broadcasts in flight."""

    server: str
    transport: str
    history: bool
    clients: int
    in_flight: int
    deliveries_per_s: float = 0.0
    broadcasts_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    latency_samples: int = 0
    server_cpu_us_per_delivery: float = 0.0
    server_cpu_share: float = 0.0
    loadgen_cpu_share: float = 0.0
    other_cpu_share: float = 0.0
    """Busy time of the server's CPU not spent by the server (other processes, steal)."""
    loadgen_other_cpu_share: float = 0.0
    """Busy time of the load generator's CPUs not spent by the load generator."""
    attempts: int = 1
    deliveries_per_read: float = 0.0
    rss_per_conn_kib: float = 0.0
    vs_peer: float | None = None
    """deliveries/s divided by the peer's at the same N and K."""
    lost: int = 0
    stalled: int = 0
    error: str | None = None


@dataclass
class RedisRow:
    """One shape of the Redis section: a setup (standalone, or ``--redis`` nodes on one
    ``redis-server``) at N WebSocket clients with K broadcasts in flight."""

    setup: str
    nodes: int
    """``--redis`` nodes (0: the standalone server, history in memory off as in the fan-out
    table); with 2, clients alternate halves: the first half on node A, the rest on B."""
    clients: int
    in_flight: int
    latency: str = ""
    """What p50/p99 time: ``echo+rx`` (senders' echoes and sampled receivers, as in the
    fan-out table), or ``A->B`` (sent on node A, read by a client of node B)."""
    deliveries_per_s: float = 0.0
    broadcasts_per_s: float = 0.0
    """Messages sent per second in the window (every one a room event Redis orders)."""
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    latency_samples: int = 0
    node_cpu_s: list[float] = field(default_factory=list)
    """CPU seconds of each server process (node) in the window."""
    node_cpu_us_per_delivery: float = 0.0
    """All nodes' CPU per delivery."""
    redis_cpu_s: float | None = None
    """redis-server's CPU seconds in the window (``/proc/<pid>/stat``); None standalone."""
    redis_cpu_us_per_delivery: float | None = None
    publishes_per_s: float | None = None
    """PUBLISH calls Redis ran per second in the window (``INFO commandstats``), all nodes."""
    publishes_per_s_per_node: float | None = None
    fcalls_per_s: float | None = None
    """Redis Function calls per second in the window (each a room event, or a batch's part)."""
    loadgen_cpu_share: float = 0.0
    deliveries_per_read: float = 0.0
    """Deliveries per read by the load generator: how many events each write carried."""
    other_cpu_share: float = 0.0
    """Busy time of the server's CPU not spent by the nodes or redis-server (other work)."""
    attempts: int = 1
    loadgen_other_cpu_share: float = 0.0
    """Busy time of the load generator's CPUs not spent by it (the orchestrator, other work)."""
    vs_standalone: float | None = None
    """deliveries/s divided by the standalone server's at the same K."""
    window_s: float = 0.0
    lost: int = 0
    stalled: int = 0
    error: str | None = None


@dataclass
class Handshakes:
    server: str
    transport: str = "ws"
    """``ws``, or ``wss``: WebSocket over TLS, each handshake a TLS handshake too."""
    per_s: float = 0.0
    server_cpu_us_each: float = 0.0
    server_cpu_share: float = 0.0
    loadgen_cpu_share: float = 0.0
    failed: int = 0
    error: str | None = None


@dataclass
class Idle:
    server: str
    transport: str
    connections: int = 0
    rss_per_conn_kib: float = 0.0
    rss_base_mib: float = 0.0
    connect_s: float = 0.0
    error: str | None = None


@dataclass
class Results:
    settings: Settings
    fd_limit: int
    idle_wanted: int
    server_cpus: list[int] | None
    loadgen_cpus: list[int] | None
    workers: int
    rows: list[Row] = field(default_factory=list)
    handshakes: list[Handshakes] = field(default_factory=list)
    idle: list[Idle] = field(default_factory=list)
    storms: list[Storm] = field(default_factory=list)
    """The join storm, one per :data:`STORM_TRANSPORTS` entry."""
    redis: list[RedisRow] = field(default_factory=list)
    """The Redis section: :data:`REDIS_SETUPS` at each of :data:`REDIS_IN_FLIGHT`."""
    notes: list[str] = field(default_factory=list)


@dataclass
class Bench:
    """Owns the workers and the plan; every server it starts is stopped before it returns."""

    settings: Settings
    fleet: Fleet
    server_cpus: list[int] | None
    results: Results
    progress: Callable[[str], None]
    db_dir: str
    lg_cpus: list[int] | None = None
    _certificates: servers.Certificates | None = None
    _sync: int = 0
    _retries: int = RETRY_BUDGET

    # --- the whole plan -------------------------------------------------------------

    def run(self) -> Results:
        self.handshakes()
        for n in self.settings.sizes:
            for setup in self._setups(n):
                self.throughput(setup, n)
        self._ratios()
        self.idle()
        self.storm()
        self.redis_section()
        return self.results

    def _setups(self, n: int) -> list[Setup]:
        """Who runs at ``n`` clients: the floors only where a target is set (N <= 200)."""
        floors = [FLOOR_WS, WSPROTO_WS] if n <= FLOORS_UP_TO else []
        tls = [TRIO_WSS] if n == TLS_AT else []
        if n == self.settings.history_size:
            return [PEER_WS, *floors, TRIO_WS, *tls, TRIO_WS_DB, TRIO_TCP, TRIO_TCP_DB]
        return [PEER_WS, *floors, TRIO_WS, *tls, TRIO_TCP]

    def _spec(self, setup: Setup) -> servers.ServerSpec:
        if setup.server in servers.REFERENCES:
            return servers.reference(setup.server)
        if setup.transport == "wss":
            return servers.triochat(db_path=None, tls=self._tls())
        if not setup.history:
            return servers.triochat(db_path=None)
        path = tempfile.mktemp(prefix="history-", suffix=".sqlite3", dir=self.db_dir)
        return servers.triochat(db_path=path)

    def _tls(self) -> servers.Certificates:
        """The TLS rows' CA and certificate, made once per run in its temporary folder."""
        if self._certificates is None:
            self._certificates = servers.make_certificates(self.db_dir)
        return self._certificates

    @contextmanager
    def _server(self, setup: Setup) -> Iterator[tuple[servers.RunningServer, Endpoint]]:
        with servers.running(self._spec(setup), cpus=self.server_cpus) as server:
            host, port = server.urls[setup.transport]
            cafile = self._tls().cafile if setup.transport == "wss" else None
            websocket = setup.transport in ("ws", "wss")
            try:
                yield server, Endpoint(host, port, websocket=websocket, cafile=cafile)
            except KeyboardInterrupt:
                raise  # workers may be mid-command: the caller tears the whole fleet down
            except BaseException:
                self.fleet.broadcast("close")
                raise
            else:
                self.fleet.broadcast("close")  # clients go first: the server then stops at once

    # --- throughput shapes --------------------------------------------------------------

    def throughput(self, setup: Setup, n: int) -> None:
        shapes = self.settings.history_in_flight if setup.history else self.settings.in_flight
        rows = [Row(setup.server, setup.transport, setup.history, n, k) for k in shapes]
        self.results.rows += rows
        self.progress(f"{setup.label}: connecting {n} clients")
        try:
            with self._server(setup) as (server, endpoint):
                base = server.rss()
                self._connect(endpoint, n, room_size=0)
                self._sync_all()
                rss = (server.rss() - base) / n / 1024
                for row in rows:
                    self.progress(f"{setup.label}: N={n}, {row.in_flight} in flight")
                    row.rss_per_conn_kib = rss
                    self._shape(server, row)
        except (LoadgenError, servers.ServerFailed) as exc:
            for row in rows:
                row.error = row.error or str(exc)
            self.results.notes.append(f"{setup.label} N={n}: {exc}")

    def _connect(self, endpoint: Endpoint, n: int, *, room_size: int) -> float:
        workers = len(self.fleet)
        bounds = [n * w // workers for w in range(workers + 1)]
        pops = [
            Population(endpoint, bounds[w], bounds[w + 1] - bounds[w], ROOM, room_size=room_size)
            for w in range(workers)
        ]
        return max(float(a["seconds"]) for a in self.fleet.call("connect", pops))

    def _sync_all(self) -> None:
        self._sync += 1
        self.fleet.call("sync", [(self._sync, w == 0, ROOM) for w in range(len(self.fleet))])

    def _shape(self, server: servers.RunningServer, row: Row) -> None:
        """Measure ``row``; once more (budget permitting) if other work disturbed the window."""
        self._measure(server, row)
        if _disturbed(row) and self._retries > 0:
            self._retries -= 1
            again = dataclasses.replace(row)
            self._measure(server, again)
            best = min((row, again), key=lambda r: r.other_cpu_share + r.loadgen_other_cpu_share)
            vars(row).update(vars(best), attempts=2)

    def _measure(self, server: servers.RunningServer, row: Row) -> None:
        s = self.settings
        self._sync_all()
        specs = self._run_specs(row.clients, row.in_flight)
        start = time.monotonic() + 0.05
        measure, end = start + s.warmup, start + s.warmup + s.window
        self.fleet.submit("run", [RunSpec(ROOM, se, sa, start, measure, end) for se, sa in specs])
        _sleep_until(measure)
        cpu0, busy0, lg0 = server.cpu_s(), self._busy(self.server_cpus), self._busy(self.lg_cpus)
        _sleep_until(end)
        cpu1, busy1, lg1 = server.cpu_s(), self._busy(self.server_cpus), self._busy(self.lg_cpus)
        results: list[RunResult] = self.fleet.collect()
        _fill(row, results, server_cpu_s=cpu1 - cpu0, window=s.window)
        if self.server_cpus and self.lg_cpus:
            row.other_cpu_share = max(0.0, (busy1 - busy0) - (cpu1 - cpu0)) / s.window
            loadgen_s = row.loadgen_cpu_share * s.window
            row.loadgen_other_cpu_share = max(0.0, (lg1 - lg0) - loadgen_s) / s.window

    @staticmethod
    def _busy(cpus: list[int] | None) -> float:
        return servers.cpu_busy_s(cpus) if cpus else 0.0

    def _run_specs(
        self, n: int, k: int, receivers: Sequence[int] | None = None
    ) -> list[tuple[dict[int, int], tuple[int, ...]]]:
        """Senders spread evenly over the join order; sampled receivers spread over the rest
        (over ``receivers`` only, when given)."""
        senders = {n * j // k: j for j in range(k)}
        pool = range(n) if receivers is None else receivers
        others = [i for i in pool if i not in senders]
        count = min(self.settings.sampled, len(others))
        sampled = {others[(2 * j + 1) * len(others) // (2 * count)] for j in range(count)}
        workers = len(self.fleet)
        bounds = [n * w // workers for w in range(workers + 1)]
        specs = []
        for w in range(workers):
            lo, hi = bounds[w], bounds[w + 1]
            mine = {i - lo: sid for i, sid in senders.items() if lo <= i < hi}
            watch = tuple(sorted(i - lo for i in sampled if lo <= i < hi))
            specs.append((mine, watch))
        return specs

    def _ratios(self) -> None:
        peer = {
            (r.clients, r.in_flight): r.deliveries_per_s
            for r in self.results.rows
            if r.server == PEER_WS.server and not r.error
        }
        for row in self.results.rows:
            base = peer.get((row.clients, row.in_flight))
            if base and not row.error:
                row.vs_peer = row.deliveries_per_s / base

    # --- handshakes ---------------------------------------------------------------------

    def handshakes(self) -> None:
        for setup in (PEER_WS, FLOOR_WS, WSPROTO_WS, TRIO_WS, TRIO_WSS):
            entry = Handshakes(setup.server, setup.transport)
            self.results.handshakes.append(entry)
            self.progress(f"{setup.label}: handshakes")
            try:
                with self._server(setup) as (server, endpoint):
                    self._handshakes(server, endpoint, entry)
            except (LoadgenError, servers.ServerFailed) as exc:
                entry.error = str(exc)

    def _handshakes(
        self, server: servers.RunningServer, endpoint: Endpoint, entry: Handshakes
    ) -> None:
        s = self.settings
        start = time.monotonic() + 0.05
        measure, end = start + 0.3, start + 0.3 + s.handshake_window
        parallel = max(1, s.handshake_parallel // len(self.fleet))
        spec = HandshakeSpec(endpoint, parallel, start, measure, end)
        self.fleet.submit("handshakes", [spec] * len(self.fleet))
        _sleep_until(measure)
        cpu0 = server.cpu_s()
        _sleep_until(end)
        cpu1 = server.cpu_s()
        results: list[HandshakeResult] = self.fleet.collect()
        completed = sum(r.completed for r in results)
        entry.per_s = completed / s.handshake_window
        entry.server_cpu_share = (cpu1 - cpu0) / s.handshake_window
        entry.server_cpu_us_each = (cpu1 - cpu0) / completed * 1e6 if completed else 0.0
        entry.loadgen_cpu_share = sum(r.cpu_s for r in results) / s.handshake_window
        entry.failed = sum(r.failed for r in results)

    # --- idle connections ----------------------------------------------------------------

    def idle(self) -> None:
        count = self.results.idle_wanted
        for setup in (PEER_WS, FLOOR_WS, WSPROTO_WS, TRIO_WS, TRIO_TCP):
            entry = Idle(setup.server, setup.transport)
            self.results.idle.append(entry)
            self.progress(f"{setup.label}: {count} idle connections")
            try:
                with self._server(setup) as (server, endpoint):
                    server.wait_quiet()
                    base = server.rss()
                    entry.connect_s = self._connect(endpoint, count, room_size=IDLE_ROOM_SIZE)
                    server.wait_quiet()
                    entry.connections = count
                    entry.rss_base_mib = base / 2**20
                    entry.rss_per_conn_kib = (server.rss() - base) / count / 1024
            except (LoadgenError, servers.ServerFailed) as exc:
                entry.error = str(exc)

    # --- the Redis section ---------------------------------------------------------------

    def redis_section(self) -> None:
        """:data:`REDIS_SETUPS` side by side, each on fresh processes (and a fresh Redis)."""
        n = self.settings.redis_clients
        for name, nodes in REDIS_SETUPS:
            rows = [RedisRow(name, nodes, n, k) for k in REDIS_IN_FLIGHT]
            self.results.redis += rows
            self.progress(f"redis: {name}: connecting {n} clients")
            try:
                with self._redis_setup(nodes, metrics=name == METRICS) as (procs, store, endpoints):
                    try:
                        owners = self._connect_split(endpoints, n)
                        self._sync_all()
                        for row in rows:
                            self.progress(f"redis: {name}: N={n}, {row.in_flight} in flight")
                            self._redis_shape(procs, store, row, owners)
                    except LoadgenError as exc:  # the nodes' logs go with them: quote them
                        raise LoadgenError(f"{exc}; {_last_words(procs)}") from None
            except (LoadgenError, servers.ServerFailed) as exc:
                for row in rows:
                    row.error = row.error or str(exc)
                self.results.notes.append(f"redis section, {name}: {exc}")
        base = {
            r.in_flight: r.deliveries_per_s for r in self.results.redis if r.setup == STANDALONE
        }
        for row in self.results.redis:
            if base.get(row.in_flight) and not row.error:
                row.vs_standalone = row.deliveries_per_s / base[row.in_flight]

    @contextmanager
    def _redis_setup(
        self, nodes: int, *, metrics: bool = False
    ) -> Iterator[tuple[list[servers.RunningServer], redis.Redis | None, list[Endpoint]]]:
        """The standalone server (``nodes`` 0; with ``metrics``, scraped every
        :data:`SCRAPE_EVERY_S`), or a fresh ``redis-server`` and ``nodes`` nodes on it;
        every process on the server's CPUs, so the load generator keeps its own."""
        with ExitStack() as stack:
            store: redis.Redis | None = None
            specs = [servers.triochat(db_path=None, metrics=metrics)]
            if nodes:
                store = stack.enter_context(redis.running(cpus=self.server_cpus))
                specs = [
                    servers.triochat(db_path=None, redis_url=store.url, node_id=f"bench-{i}")
                    for i in range(nodes)
                ]
            procs = [stack.enter_context(servers.running(s, cpus=self.server_cpus)) for s in specs]
            if metrics:
                stack.enter_context(_scraping(*procs[0].urls["http"]))
            endpoints = [Endpoint(*p.urls["ws"], websocket=True) for p in procs]
            try:
                yield procs, store, endpoints
            except KeyboardInterrupt:
                raise  # workers may be mid-command: the caller tears the whole fleet down
            except BaseException:
                self.fleet.broadcast("close")
                raise
            else:
                self.fleet.broadcast("close")  # clients first: the servers then stop at once

    def _connect_split(self, endpoints: list[Endpoint], n: int) -> list[int]:
        """``n`` clients in room :data:`ROOM`, each worker's share split evenly and in order
        over ``endpoints``; which endpoint each client (global index) is on."""
        workers = len(self.fleet)
        bounds = [n * w // workers for w in range(workers + 1)]
        owners = [0] * n
        parts = len(endpoints)
        for e, endpoint in enumerate(endpoints):
            pops = []
            for w in range(workers):
                lo, size = bounds[w], bounds[w + 1] - bounds[w]
                first, last = lo + size * e // parts, lo + size * (e + 1) // parts
                owners[first:last] = [e] * (last - first)
                pops.append(Population(endpoint, first, last - first, ROOM))
            self.fleet.call("connect", pops)
        return owners

    def _redis_shape(
        self,
        procs: list[servers.RunningServer],
        store: redis.Redis | None,
        row: RedisRow,
        owners: list[int],
    ) -> None:
        """Measure ``row``; once more (budget permitting) if other work disturbed the window."""
        self._redis_measure(procs, store, row, owners)
        if max(row.other_cpu_share, row.loadgen_other_cpu_share) > DISTURBED and self._retries:
            self._retries -= 1
            again = dataclasses.replace(row)
            self._redis_measure(procs, store, again, owners)
            best = min((row, again), key=lambda r: r.other_cpu_share + r.loadgen_other_cpu_share)
            vars(row).update(vars(best), attempts=2)

    def _redis_measure(
        self,
        procs: list[servers.RunningServer],
        store: redis.Redis | None,
        row: RedisRow,
        owners: list[int],
    ) -> None:
        """One shape. With two nodes at 1 in flight, the latency is cross-node: the sender
        is on node A and only clients of node B are timed."""
        s = self.settings
        self._sync_all()
        cross = row.nodes >= 2 and row.in_flight == 1
        receivers = [i for i, node in enumerate(owners) if node == 1] if cross else None
        specs = self._run_specs(row.clients, row.in_flight, receivers)
        if cross:
            assert all(owners[i] == 0 for se, _ in specs for i in se), "sender not on node A"
        row.latency = "A->B" if cross else "echo+rx"
        start = time.monotonic() + 0.05
        measure, end = start + s.warmup, start + s.warmup + s.window
        runs = [RunSpec(ROOM, se, sa, start, measure, end, time_echo=not cross) for se, sa in specs]
        self.fleet.submit("run", runs)

        def sample() -> tuple[list[float], float, dict[str, int], float, float]:
            cpu = [p.cpu_s() for p in procs]
            busy, lg_busy = self._busy(self.server_cpus), self._busy(self.lg_cpus)
            redis_s, calls = (store.cpu_s(), store.calls()) if store else (0.0, {})
            return cpu, redis_s, calls, busy, lg_busy

        try:
            _sleep_until(measure)
            cpu0, redis0, calls0, busy0, lg0 = sample()
            _sleep_until(end)
            cpu1, redis1, calls1, busy1, lg1 = sample()
        except servers.ServerFailed:
            self.fleet.collect()  # the workers' answers first: the pipes stay in step
            raise
        results: list[RunResult] = self.fleet.collect()
        _redis_fill(
            row,
            results,
            node_cpu_s=[b - a for a, b in zip(cpu0, cpu1, strict=True)],
            redis_cpu_s=redis1 - redis0 if store else None,
            calls={c: n - calls0.get(c, 0) for c, n in calls1.items()} if store else None,
            window=s.window,
        )
        if row.error:  # the nodes' logs go with them: quote them
            row.error += f"; {_last_words(procs)}"
        if self.server_cpus and self.lg_cpus:
            ours = sum(cpu1) - sum(cpu0) + (redis1 - redis0)
            row.other_cpu_share = max(0.0, (busy1 - busy0) - ours) / s.window
            loadgen_s = row.loadgen_cpu_share * s.window
            row.loadgen_other_cpu_share = max(0.0, (lg1 - lg0) - loadgen_s) / s.window

    # --- join storm ----------------------------------------------------------------------

    def storm(self) -> None:
        """One storm per :data:`STORM_TRANSPORTS` entry, each against a fresh server."""
        for transport in STORM_TRANSPORTS:
            storm = measure_storm(
                self.settings.storm_clients,
                transport=transport,
                server_cpus=self.server_cpus,
                progress=self.progress,
            )
            self.results.storms.append(storm)


def _last_words(procs: list[servers.RunningServer]) -> str:
    return "; ".join(f"node {i}: {p.last_words()}" for i, p in enumerate(procs))


@contextmanager
def _scraping(host: str, port: int) -> Iterator[None]:
    """GET ``/metrics`` every :data:`SCRAPE_EVERY_S` on a thread, as Prometheus would."""
    stop = threading.Event()

    def scrape() -> None:
        while not stop.wait(SCRAPE_EVERY_S):  # a period, not a synchronisation
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=2).read()

    thread = threading.Thread(target=scrape, name="scraper", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def _redis_fill(
    row: RedisRow,
    results: list[RunResult],
    *,
    node_cpu_s: list[float],
    redis_cpu_s: float | None,
    calls: dict[str, int] | None,
    window: float,
) -> None:
    hist = HdrHistogram(1, LATENCY_MAX_US, 3)
    for result in results:
        hist.add(HdrHistogram.decode(result.histogram))
    deliveries = sum(r.deliveries for r in results)
    row.window_s = window
    row.deliveries_per_s = deliveries / window
    row.broadcasts_per_s = sum(r.broadcasts for r in results) / window
    row.latency_samples = hist.get_total_count()
    row.p50_ms = hist.get_value_at_percentile(50) / 1000
    row.p99_ms = hist.get_value_at_percentile(99) / 1000
    row.node_cpu_s = node_cpu_s
    row.node_cpu_us_per_delivery = sum(node_cpu_s) / deliveries * 1e6 if deliveries else 0.0
    row.loadgen_cpu_share = sum(r.cpu_s for r in results) / window
    reads = sum(r.reads for r in results)
    row.deliveries_per_read = deliveries / reads if reads else 0.0
    if redis_cpu_s is not None:
        row.redis_cpu_s = redis_cpu_s
        row.redis_cpu_us_per_delivery = redis_cpu_s / deliveries * 1e6 if deliveries else 0.0
    if calls is not None:
        publishes = calls.get("publish", 0) + calls.get("spublish", 0)
        row.publishes_per_s = publishes / window
        row.publishes_per_s_per_node = row.publishes_per_s / max(1, row.nodes)
        row.fcalls_per_s = calls.get("fcall", 0) / window
    row.lost = sum(r.lost for r in results)
    row.stalled = sum(r.stalled for r in results)
    if row.lost or row.stalled:
        row.error = f"{row.lost} clients dropped by the server, {row.stalled} senders stalled"


def _disturbed(row: Row) -> bool:
    """Whether other work on either core may have cost this window its figures."""
    return max(row.other_cpu_share, row.loadgen_other_cpu_share) > DISTURBED


def _sleep_until(instant: float) -> None:
    delay = instant - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def _fill(row: Row, results: list[RunResult], *, server_cpu_s: float, window: float) -> None:
    hist = HdrHistogram(1, LATENCY_MAX_US, 3)
    for result in results:
        hist.add(HdrHistogram.decode(result.histogram))
    deliveries = sum(r.deliveries for r in results)
    reads = sum(r.reads for r in results)
    row.deliveries_per_s = deliveries / window
    row.broadcasts_per_s = sum(r.broadcasts for r in results) / window
    row.latency_samples = hist.get_total_count()
    row.p50_ms = hist.get_value_at_percentile(50) / 1000
    row.p99_ms = hist.get_value_at_percentile(99) / 1000
    row.server_cpu_share = server_cpu_s / window
    row.server_cpu_us_per_delivery = server_cpu_s / deliveries * 1e6 if deliveries else 0.0
    row.loadgen_cpu_share = sum(r.cpu_s for r in results) / window
    row.deliveries_per_read = deliveries / reads if reads else 0.0
    row.lost = sum(r.lost for r in results)
    row.stalled = sum(r.stalled for r in results)
    if row.lost or row.stalled:
        row.error = f"{row.lost} clients dropped by the server, {row.stalled} senders stalled"


def raise_fd_limit() -> int:
    """Raise this process's (and so its children's) descriptor limit to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def plan_cpus() -> tuple[list[int] | None, list[int] | None]:
    """Server on the first CPU, load generator on the others; no pinning on one CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return cpus[:1], cpus[1:]
