"""The bench's Redis section runs end to end, small: a proof it works, not a timing.

Real processes as ``make bench`` runs them: the bench's own ``redis-server``
(bench/redis.py), the standalone server, one and two ``serve --redis`` nodes, and
one load generator worker. Every shape must deliver with nothing lost, the
two-node 1-in-flight shape must time receipts on node B only, Redis's CPU and
PUBLISH counts must be read, the report must print, and every ``redis-server``
started must be gone at the end.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tempfile

from rich.console import Console

from bench.loadgen import Fleet
from bench.report import print_report, to_json
from bench.runner import QUICK, REDIS_IN_FLIGHT, REDIS_SETUPS, Bench, Results
from tests.redisd import needs_redis

CLIENTS = 20


def _our_redis_servers() -> list[int]:
    """``redis-server`` children of this process (other tests' servers are not ours)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except (OSError, ValueError):
            continue
        name = stat[stat.find(b"(") + 1 : stat.rfind(b")")]
        ppid = int(stat.rpartition(b")")[2].split()[1])
        if name == b"redis-server" and ppid == os.getpid():
            pids.append(int(entry))
    return pids


@needs_redis
def test_redis_section_measures_every_setup() -> None:
    settings = dataclasses.replace(QUICK, warmup=0.1, window=0.4, redis_clients=CLIENTS)
    results = Results(settings, 1024, 0, None, None, 1)
    fleet = Fleet(1, None)
    try:
        with tempfile.TemporaryDirectory(prefix="tc-bench-") as folder:
            Bench(settings, fleet, None, results, lambda _: None, folder).redis_section()
    finally:
        fleet.close()
    assert _our_redis_servers() == [], "a redis-server was left running"
    assert len(results.redis) == len(REDIS_SETUPS) * len(REDIS_IN_FLIGHT)
    for row in results.redis:
        assert row.error is None, row
        assert row.clients == CLIENTS
        assert row.deliveries_per_s > 0
        assert row.latency_samples > 0
        assert len(row.node_cpu_s) == max(1, row.nodes)
        assert row.vs_standalone is not None
        if row.nodes:
            assert row.redis_cpu_s is not None
            assert row.publishes_per_s is not None
            assert row.publishes_per_s > 0
        else:
            assert row.redis_cpu_s is None
            assert row.publishes_per_s is None
    cross = [r for r in results.redis if r.latency == "A->B"]
    assert [(r.nodes, r.in_flight) for r in cross] == [(2, 1)]
    out = io.StringIO()
    print_report(results, Console(file=out, width=200))
    assert "cross-node latency" in out.getvalue()
    doc = json.loads(json.dumps(to_json(results, {})))
    assert len(doc["redis"]) == len(results.redis)
