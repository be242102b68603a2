"""Every tunable of the server in one place, with the defaults `serve` uses."""

from __future__ import annotations

from dataclasses import dataclass

from triochat.protocol import rules
from triochat.protocol.events import Limits

KIB = 1024
MIB = 1024 * KIB

MIN_MAX_LINE = 512
"""The smallest ``max_line`` a server may have: room for a ``hello`` with the
longest nick, the longest room name and a resume ``seq`` for it."""


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int | None = 5000
    """WebSocket port; 0 picks a free one, None disables the listener."""
    tcp_port: int | None = 5001
    """Plain TCP (NDJSON) port; 0 picks a free one, None disables the listener."""

    certfile: str | None = None
    """PEM certificate chain; with ``keyfile``, both listeners speak TLS (wss://, tls://)."""
    keyfile: str | None = None
    """PEM private key of ``certfile``'s certificate."""

    handshake_timeout: float = 10.0
    """Seconds from accept to a WebSocket upgrade (TLS handshake included) or, on TCP
    with TLS, to the end of the TLS handshake; and again from there to ``hello``."""
    keepalive_interval: float = 30.0
    """Seconds of silence from a client before the server checks it is alive; 0: never."""
    keepalive_timeout: float = 20.0
    """Seconds the client has to answer that check before it is dropped (``timeout``)."""
    close_timeout: float = 2.0
    """Seconds one closing connection may spend flushing and saying goodbye."""
    drain_timeout: float = 5.0
    """Seconds the whole server may spend saying goodbye on shutdown."""

    max_line: int = 64 * KIB
    max_text: int = 8000
    max_topic: int = 300
    """Characters a room's topic may hold (``welcome.limits.max_topic``)."""
    message_timeout: float = 30.0
    """Seconds a line (TCP) or a WebSocket message may take from its first byte to its last."""
    max_rooms_per_client: int = 100
    """Rooms one client may be in at once (``welcome.limits.max_rooms`` on the wire)."""
    max_rooms: int = 100_000
    """Rooms with members at once; a join that would open one more is refused."""
    room_history_bytes: int = 8 * MIB
    """Bytes of retained history one room may keep in memory (its oldest events go first)."""
    history_bytes: int = 256 * MIB
    """Bytes all rooms' history may take in memory, empty rooms' included; past it,
    empty rooms are freed (least recently used first), then the largest rooms trimmed."""

    max_connections: int | None = None
    """Connections served at once; None: as many as the open-files limit allows, less a reserve."""
    max_connections_per_ip: int = 32
    """Connections one address may hold at once (loopback exempt unless ``limit_loopback``)."""
    connect_rate: float = 10.0
    """New connections per second one address may open, after ``connect_burst``."""
    connect_burst: int = 30
    join_rate: float = 20.0
    """Room joins per second one address may make (all its connections together)."""
    join_burst: int = 120
    limit_loopback: bool = False
    """Apply the per-address limits to loopback peers too (off: local tools and tests)."""
    trusted_proxies: tuple[str, ...] = ()
    """Addresses (or networks) whose ``X-Forwarded-For`` names the real client."""
    allowed_origins: tuple[str, ...] = ()
    """Browser origins (``scheme://host[:port]``, or ``*`` for all) that may open a
    WebSocket besides the ``Host``'s own; requests without ``Origin`` always may."""
    outbox_events: int = 1000
    outbox_bytes: int = 1 * MIB
    rate_limit: float = 20.0
    """Sustained events per second per client; 0 turns flood control off."""
    burst: int = 60
    """Events a client may send at once before ``rate_limit`` applies."""
    history_limit: int = 50
    """Events replayed on join, and the default page of ``history``."""
    history_max_page: int = 500
    list_limit: int = 100
    """Rooms in a ``rooms`` page when ``list`` gives no ``limit``."""
    list_max_page: int = 500
    """The most rooms in a ``rooms`` page (``list.limit`` is clamped to 1..this)."""
    retention: int = 10_000
    """Events kept per room, in memory and in the store."""
    db_path: str | None = None
    """SQLite file for durable history; None keeps history in memory only (or in
    Redis, with ``redis_url``)."""
    metrics_port: int | None = None
    """Port of the ``/metrics`` listener (Prometheus text); 0 picks a free one, None: none."""
    metrics_host: str = "127.0.0.1"
    """Address of the ``/metrics`` listener: loopback unless an operator opens it up."""
    redis_url: str | None = None
    """``redis://``, ``rediss://`` or ``unix://``: rooms, nicks and history shared by
    every node of that Redis (docs/scaling.md); None: this server alone."""
    redis_cafile: str | None = None
    """CA certificates (PEM) a ``rediss://`` server's certificate is checked against;
    None: the system's."""
    redis_cluster: bool = False
    """``redis_url`` is one node of a Redis Cluster (rooms on shard channels)."""
    node_id: str | None = None
    """Names this node in Redis and in logs; None: a random one."""
    redis_lease: float = 10.0
    """Seconds a node's lease and its nicks' leases last unless renewed (a fifth of
    it is the heartbeat): a dead node's members are announced left within about
    1.2 leases, and its nicks are free after one."""
    accounts_path: str | None = None
    """SQLite file holding registered nicks (``serve`` uses the history file);
    None keeps accounts in memory, for this run only."""
    auth: str = "open"
    """``open``: guests may use any unregistered nick; ``required``: every hello
    needs a password or a token."""
    allow_insecure_auth: bool = False
    """Accept passwords (login and ``register``) over plaintext from any peer."""
    loopback_is_secure: bool = True
    """Accept passwords over plaintext from loopback peers (nothing crosses a network)."""
    auth_threads: int = 2
    """Password hashes computed at once (worker threads); more logins wait their turn."""
    auth_fail_rate: float = 0.1
    """Failed logins per second one address, and one account, may make after ``auth_fail_burst``."""
    auth_fail_burst: int = 10
    jwt_secret: bytes | None = None
    """The HS256 key of ``hello{token}`` (``--jwt-secret-file``); None: no HS256 tokens."""
    jwt_public_key: bytes | None = None
    """A PEM public key (RSA: RS256, Ed25519: EdDSA) for ``hello{token}``; None: none."""
    batch_turns: int = 2
    """Scheduler turns the flusher lets pass between the first event of a burst and
    flushing, so events already on their way land in the same write
    (see triochat/server/outbox.py); the history committer does the same before
    taking a group (see triochat/server/store.py)."""

    def limits(self) -> Limits:
        return Limits(
            max_line=self.max_line,
            max_text=self.max_text,
            max_nick=rules.MAX_NICK,
            max_room=rules.MAX_ROOM,
            max_rooms=self.max_rooms_per_client,
            rate_limit=self.rate_limit,
            burst=self.burst,
            max_history_page=self.history_max_page,
            outbox_events=self.outbox_events,
            outbox_bytes=self.outbox_bytes,
            max_topic=self.max_topic,
        )
