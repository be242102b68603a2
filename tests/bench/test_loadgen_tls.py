"""The load generator speaks WebSocket over TLS to triochat, as ``make bench``'s TLS rows do.

A real ``triochat serve --certfile … --keyfile …`` process (bench.servers), a
trustme CA in a temporary folder, and one in-process worker: clients connect,
deliveries are counted, and handshakes complete, with nothing lost or failed.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench import servers
from bench.loadgen import Endpoint, HandshakeSpec, Population, RunSpec, Worker

CLIENTS = 20


def test_loadgen_over_wss(tmp_path: Path) -> None:
    certificates = servers.make_certificates(str(tmp_path))
    spec = servers.triochat(db_path=None, tls=certificates)
    with servers.running(spec, cpus=None) as server:
        host, port = server.urls["wss"]
        endpoint = Endpoint(host, port, websocket=True, cafile=certificates.cafile)
        worker = Worker()
        try:
            worker.connect(Population(endpoint, 0, CLIENTS, "room", timeout=20))
            worker.sync((1, True, "room"))
            start = time.monotonic() + 0.05
            run = worker.run(RunSpec("room", {0: 0, 7: 1}, (3,), start, start + 0.2, start + 0.7))
            worker.close()
            start = time.monotonic() + 0.05
            shakes = worker.handshakes(HandshakeSpec(endpoint, 4, start, start + 0.1, start + 0.6))
        finally:
            worker.close()
    assert (run.lost, run.stalled) == (0, 0)
    assert run.broadcasts > 0
    # Every broadcast reaches every client; the window's edges cut a few either way.
    assert abs(run.deliveries / (CLIENTS * run.broadcasts) - 1) < 0.1
    assert shakes.completed > 0
    assert shakes.failed == 0
