"""What every scenario gets: options, names, randomness, a server to test, and a progress line.

With no ``--url`` each scenario gets a fresh in-process server (free ports,
stopped afterwards) configured for what it tests; see :data:`OWN_SERVER`.
Against ``--url`` servers the scenario adapts to the limits the server
announces in ``welcome`` instead.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from harness.options import Options
from triochat.server import Server, ServerConfig, serve

KIB = 1024

OWN_SERVER: dict[str, dict[str, Any]] = {
    # Flood control stays on (20/s, burst 60) everywhere: the harness's own senders
    # stay under it (10/s each by default) and ``flood`` needs it.
    # ``slow_reader``: a small outbox, so a stalled reader is evicted after KiB, not MiB.
    "slow_reader": {"outbox_bytes": 256 * KIB},
    # ``abuse``: a small outbox (what each attacker may pin), and the per-address limits
    # applied to loopback, so that one address's connection flood is refused.
    "abuse": {"outbox_bytes": 256 * KIB, "limit_loopback": True, "max_connections_per_ip": 24},
}

Progress = Callable[[str, float, float], None]


def _no_progress(description: str, completed: float, total: float) -> None:
    pass


@dataclass
class Target:
    urls: list[str]
    server: Server | None = None
    """The in-process server, when the harness started one."""


@dataclass
class Context:
    options: Options
    progress: Progress = _no_progress
    run_id: str = field(default_factory=lambda: "h" + secrets.token_hex(2))

    def rng(self, scenario: str) -> random.Random:
        """``scenario``'s random choices: the same for the same ``--seed``, whatever else runs.

        Seeded from the seed and the scenario's name, so ``--scenario X --seed N``
        replays the choices X made in a full run with ``--seed N``.
        """
        return random.Random(f"{self.options.seed}:{scenario}")

    def nick(self, scenario: str, label: str) -> str:
        """A nick unique to this run and scenario (32 characters at most)."""
        return f"{self.run_id}-{scenario[:6]}-{label}"[:32]

    def room(self, scenario: str, label: str = "") -> str:
        return f"{self.run_id}-{scenario}{label}".lower()

    def server_config(self, scenario: str) -> ServerConfig:
        """The in-process server's configuration for ``scenario``."""
        transport = self.options.transport
        per_client = self.options.send_rate() / self.options.clients
        return ServerConfig(
            host="127.0.0.1",
            port=0 if transport == "ws" else None,
            tcp_port=0 if transport == "tcp" else None,
            # Never let flood control eat the harness's own traffic: 2x its per-client rate.
            rate_limit=max(ServerConfig().rate_limit, 2 * per_client),
            **OWN_SERVER.get(scenario, {}),
        )

    @asynccontextmanager
    async def target(self, scenario: str) -> AsyncIterator[Target]:
        """The server(s) ``scenario`` runs against, for as long as it runs."""
        if not self.options.own_server:
            yield Target(list(self.options.urls))
            return
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(serve, self.server_config(scenario))
            try:
                yield Target(list(server.urls), server)
            finally:
                server.stop()
