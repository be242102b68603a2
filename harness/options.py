"""What a harness run was asked to do, and the defaults derived from the client count.

Defaults scale with ``--clients`` so that one run stays affordable: a broadcast
costs N x (messages sent) deliveries, so the per-client message count shrinks
as N grows (about a million deliveries at most), and the offered rate aims at
~25-50k deliveries/s while keeping each client's own rate (10/s) under the
server's default flood control (20/s, burst 60).
"""

from __future__ import annotations

from dataclasses import dataclass

SCENARIOS = (
    "broadcast",
    "disconnect",
    "broken_pipe",
    "slow_reader",
    "flood",
    "bad_input",
    "churn",
    "resume",
    "abuse",
    "security",
)
MIN_CLIENTS = {
    "broadcast": 1,
    "disconnect": 3,  # a quitter and two who stay to see it go
    "broken_pipe": 5,  # three vanish (one of each kind), two stay
    "slow_reader": 3,  # the stalled reader and two others
    "flood": 3,  # the flooder and two others
    "bad_input": 3,  # a bad client and two well-behaved ones
    "churn": 2,  # a churn worker and one stable client that watches
    "resume": 3,  # two droppers (one of each kind) and a sender
    "abuse": 1,  # a fixed handful of attackers, whatever --clients says
    "security": 2,  # two members chat while the attempts run
}
"""The fewest ``--clients`` each scenario proves its claim with; the command line refuses fewer."""
PER_CLIENT_RATE = 10.0
"""Messages per second one simulated client sends by default."""
MAX_DELIVERIES = 1_000_000
"""Broadcast deliveries (messages x receivers) the default message count aims under."""
CHURN_SECONDS = 3.0
"""How long ``churn`` runs without ``--duration``."""
FAULT_MESSAGES = 200
"""Messages the traffic of a fault scenario carries, at most (fault scenarios test faults)."""


@dataclass(frozen=True, kw_only=True)
class Options:
    clients: int = 50
    messages: int | None = None
    """Messages each client sends in ``broadcast``; None derives it from ``clients``."""
    rate: float | None = None
    """Messages per second offered by all senders together; None derives it."""
    duration: float | None = None
    """Seconds of load: ``broadcast`` sends at ``rate`` for this long (unless
    ``messages`` is given) and ``churn`` churns this long; None: :data:`CHURN_SECONDS`
    of churn."""
    scenarios: tuple[str, ...] = SCENARIOS
    urls: tuple[str, ...] = ()
    """Servers to test; empty starts one in-process."""
    cafile: str | None = None
    """CA certificate trusted for ``wss://`` and ``tls://`` URLs; None: the system's CAs."""
    transport: str = "ws"
    """Transport of the in-process server."""
    json_path: str | None = None
    seed: int | None = None
    evict_within: float = 15.0
    """Seconds a stalled reader may take to be evicted (``slow_reader``)."""
    settle: float = 10.0
    """Seconds to wait for deliveries after the last scheduled send, at least."""
    password: str | None = None
    """The password ``security`` registers its owner's nick with; None: a fresh one."""
    workers: int = 1
    """Processes ``broadcast``'s clients are spread over (1: this process)."""
    html_path: str | None = None
    """Where to write the self-contained HTML report (None: none)."""
    quiet: bool = False
    verbose: bool = False
    """The report lists every check with its criterion, and every figure."""

    @property
    def own_server(self) -> bool:
        return not self.urls

    def messages_per_client(self) -> int:
        if self.messages is not None:
            return self.messages
        return max(1, min(20, MAX_DELIVERIES // (self.clients * self.clients)))

    def send_rate(self) -> float:
        if self.rate is not None:
            return self.rate
        return max(5.0, min(self.clients * PER_CLIENT_RATE, 50_000 / self.clients))

    def broadcast_messages(self) -> int:
        """Messages ``broadcast`` sends: ``messages`` per client when given, else ``rate`` x
        ``duration`` when that is given, else the automatic count per client."""
        if self.messages is None and self.duration is not None:
            return max(1, round(self.send_rate() * self.duration))
        return self.clients * self.messages_per_client()

    def churn_seconds(self) -> float:
        return CHURN_SECONDS if self.duration is None else self.duration

    def fault_messages(self) -> int:
        return min(FAULT_MESSAGES, self.clients * self.messages_per_client())
