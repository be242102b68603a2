"""Connection caps: how many connections the server and each client address may hold.

Theory of operation
-------------------
Every accepted connection is counted against ``max_connections`` until it is
released; each client address (the peer's, or the one a trusted proxy names in
``X-Forwarded-For``) also has an :class:`Address` entry holding its connection
count and two token buckets shared by its connections: new connections
(``connect_rate``) and room joins (``join_rate``). Loopback peers have no entry
unless ``limit_loopback``: local tools, the harness and the benchmark open
thousands of connections from 127.0.0.1.

An entry lives while its address holds a connection or one of its buckets is
refilling; after that it is forgotten (see :meth:`ConnectionLimits._sweep`), so
many addresses passing by leave nothing behind. A refused connection costs a
counter and a precomputed answer (:func:`refusal`), never a session.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import resource
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

import trio

from triochat.protocol import ErrorCode, encode
from triochat.protocol.events import Error
from triochat.server.config import ServerConfig
from triochat.server.ratelimit import TokenBucket
from triochat.transport.base import http_refusal

log = logging.getLogger(__name__)

FD_RESERVE = 64
"""Descriptors kept out of ``max_connections``' default: listeners, the history
database, and the connections being refused (at most ``REFUSING_MAX`` of them)."""
REFUSING_MAX = 32
"""Refusals that may wait for their peer at once; beyond it a refusal closes at once."""
REFUSE_TIMEOUT_S = 1.0
"""How long one refusal may wait for its peer to take the answer and close."""
REMIND_S = 10.0
"""While refusing goes on, one reminder this often; a gap this long ends an episode."""
ANYWHERE = 1 << 20
"""The open-files limit taken for "unlimited"."""


class Refusal(Enum):
    """Why a connection is refused."""

    FULL = "full"
    PER_ADDRESS = "per_address"
    CONNECT_RATE = "connect_rate"

    @property
    def status(self) -> int:
        """The HTTP status on the WebSocket port: 429 for the client's address, 503 for all."""
        return 503 if self is Refusal.FULL else 429


def refusal_line(why: Refusal, limits: ConnectionLimits) -> bytes:
    """The one ``error{too_many_connections}`` line a refused client reads."""
    config = limits.config
    message = {
        Refusal.FULL: f"the server is full ({limits.max_connections} connections)",
        Refusal.PER_ADDRESS: (
            f"too many connections from your address (at most {config.max_connections_per_ip})"
        ),
        Refusal.CONNECT_RATE: (
            f"your address connects too often (at most {config.connect_rate:g} per second)"
        ),
    }[why]
    return encode(Error(code=ErrorCode.TOO_MANY_CONNECTIONS, message=f"{message}; try later"))


def raise_open_files_limit() -> None:
    """Lift the soft open-files limit to the hard one: connections are descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = ANYWHERE if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %d: %s", soft, exc)
            return
        log.info("raised the open-files limit from %d to %d", soft, wanted)


def default_max_connections() -> int:
    """What the open-files limit allows, less a reserve to refuse politely beyond it.

    Under 256 descriptors the reserve is a quarter of the limit (such limits are
    for tests; nothing fits in them comfortably).
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = ANYWHERE if soft == resource.RLIM_INFINITY else soft
    return max(soft - min(FD_RESERVE, soft // 4), 1)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8 or ::1, as ``getpeername`` spells them (no parsing on the accept path)."""
    return host.startswith(("127.", "::ffff:127.")) or host == "::1"


@dataclass(eq=False, slots=True)
class Address:
    """One client address: its connections now, and the buckets they share."""

    host: str
    connects: TokenBucket
    joins: TokenBucket
    connections: int = 0
    spent: float = -math.inf
    """When a token was last taken from either bucket; both are full ``refill_s`` later."""

    def take_join(self) -> bool:
        """Spend one of the address's joins, if it has one left."""
        now = trio.current_time()
        self.spent = now
        return self.joins.take(now)


@dataclass(eq=False, slots=True)
class Claim:
    """What one admitted connection holds against the per-address limits."""

    address: Address | None = None
    """Its address's entry; None while exempt (loopback) or not yet known (proxied)."""
    proxy: str | None = None
    """The trusted proxy it came through, whose ``X-Forwarded-For`` names the client."""
    client: str | None = None
    """The client that proxy named (set once its upgrade request is read)."""

    EXEMPT: ClassVar[Claim]
    """Shared by every exempt connection: nothing is claimed, so nothing changes."""


Claim.EXEMPT = Claim()


class ConnectionLimits:
    """The counts behind ``max_connections``, ``max_connections_per_ip`` and the rates."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.max_connections = config.max_connections or default_max_connections()
        self.held = 0
        """Connections admitted and not yet released (handshaking ones included)."""
        self.refusing = 0
        """Refusals still waiting for their peer."""
        self.proxies = [ipaddress.ip_network(p, strict=False) for p in config.trusted_proxies]
        self._addresses: dict[str, Address] = {}
        self._refill_s = max(
            _refill(config.connect_burst, config.connect_rate),
            _refill(config.join_burst, config.join_rate),
        )
        self._next_sweep = -math.inf
        self.lines = {why: refusal_line(why, self) for why in Refusal}
        """The ``error`` line per refusal; on the WebSocket port, an HTTP response's body."""
        self.answers = {
            "tcp": self.lines,
            "ws": {why: http_refusal(why.status, line) for why, line in self.lines.items()},
        }
        """What a refused connection is sent, per listener scheme."""
        self.log = RefusalLog()

    def __len__(self) -> int:
        """Addresses remembered (holding connections, or with buckets refilling)."""
        return len(self._addresses)

    # --- the whole server ---------------------------------------------------------

    def enter(self) -> Refusal | None:
        """Count a new connection against ``max_connections``, or say why it cannot be."""
        if self.held >= self.max_connections:
            self.log.refused("the server holds %d connections (--max-connections)", self.held)
            return Refusal.FULL
        self.held += 1
        return None

    def leave(self, address: Address | None) -> None:
        """A connection :meth:`enter` counted is gone (with its address claim, if any)."""
        self.held -= 1
        if address is not None:
            self.release(address)

    # --- one address ----------------------------------------------------------------

    def exempt(self, host: str) -> bool:
        return not self.config.limit_loopback and is_loopback(host)

    def claim(self, host: str) -> Address | Refusal | None:
        """Count a connection from ``host``; ``None`` if the address is exempt."""
        if self.exempt(host):
            return None
        now = trio.current_time()
        address = self._addresses.get(host)
        if address is None:
            self._sweep(now)
            address = self._addresses[host] = self._new(host, now)
        if address.connections >= self.config.max_connections_per_ip:
            self.log.refused("%s holds %d (--max-connections-per-ip)", host, address.connections)
            return Refusal.PER_ADDRESS
        address.spent = now
        if not address.connects.take(now):
            self.log.refused("%s connects too often (--connect-rate)", host)
            return Refusal.CONNECT_RATE
        address.connections += 1
        return address

    def release(self, address: Address) -> None:
        address.connections -= 1

    def _new(self, host: str, now: float) -> Address:
        config = self.config
        return Address(
            host,
            TokenBucket(config.connect_rate, config.connect_burst, now),
            TokenBucket(config.join_rate, config.join_burst, now),
        )

    def _sweep(self, now: float) -> None:
        """Forget addresses with no connections whose buckets are full again.

        Runs at most once per ``refill_s``, when a new address arrives: every
        entry is then at most two refills older than its last use.
        """
        if now < self._next_sweep:
            return
        self._next_sweep = now + self._refill_s
        done = now - self._refill_s
        idle = [a.host for a in self._addresses.values() if not a.connections and a.spent <= done]
        for host in idle:
            del self._addresses[host]

    # --- proxies ----------------------------------------------------------------------

    def trusts(self, host: str) -> bool:
        """Whether ``host`` is a ``--trusted-proxy``, whose ``X-Forwarded-For`` is believed."""
        if not self.proxies:
            return False
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip in net for net in self.proxies)

    def forwarded_client(self, proxy: str, forwarded_for: list[str]) -> str:
        """The client a trusted ``proxy`` names: the rightmost untrusted hop.

        ``forwarded_for`` are the header's values, in order; hops are appended
        on the right, so those left of the first untrusted one are the client's
        own claims. A malformed hop ends the walk: the last good one stands.
        """
        client = proxy
        hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
        for hop in reversed(hops):
            try:
                client = str(ipaddress.ip_address(hop))
            except ValueError:
                break
            if not self.trusts(client):
                break
        return client


def _refill(burst: int, rate: float) -> float:
    """Seconds an empty bucket takes to fill (0 for an unlimited one)."""
    return max(burst, 1) / rate if rate > 0 else 0.0


class RefusalLog:
    """One warning when refusing starts, a reminder every ``REMIND_S`` while it goes on.

    An operator sees each episode (a flood, a full server) and how many it
    refused, not a line per refused connection.
    """

    def __init__(self) -> None:
        self.since: float | None = None
        self.refused_count = 0
        self._last = self._reminded = -math.inf

    def refused(self, why: str, *args: object) -> None:
        """One more refusal; ``why % args`` is formatted only when a line is logged."""
        now = trio.current_time()
        if now - self._last >= REMIND_S:
            self.since = self._reminded = now
            self.refused_count = 0
            log.warning("refusing connections: " + why, *args)
        elif now - self._reminded >= REMIND_S:
            self._reminded = now
            assert self.since is not None
            elapsed = now - self.since
            log.warning(
                "still refusing connections: %d in %.0f s; the latest: " + why,
                self.refused_count,
                elapsed,
                *args,
            )
        self.refused_count += 1
        self._last = now
