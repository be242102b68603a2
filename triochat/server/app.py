"""The server process: listeners, one task per connection, and an orderly stop.

Theory of operation
-------------------
:func:`serve` owns two nurseries. The outer one holds every connection's
task; the inner one holds the listeners. Stopping cancels the inner one first
(no new connections), then asks every session to say goodbye and gives the
outer one ``drain_timeout`` seconds before cancelling whatever is left. When
:func:`serve` returns, every task it started has ended and every socket it
opened is closed: that is what the nurseries guarantee.

Each connection runs inside :func:`_contained`, the one place where a failure
is caught: whatever one connection does ends that connection only.

WebSocket is spoken through wsproto, the sans-IO protocol library, with our
own framing and writes (triochat/transport/wsproto_ws.py); the listener is our
own accept loop, as for TCP. The opening HTTP request is read and judged by
triochat/transport/upgrade.py: health probes, plain HTTP and bad upgrades get
whole HTTP responses and a close, good upgrades a 101 and then wsproto.
trio-websocket remains the client library (triochat/client.py, the TUI, the
harness), not the server's.

With a certificate (``certfile``/``keyfile``) both listeners speak TLS: each
accepted socket gets a :class:`~triochat.transport.tls_direct.TLSEngine` whose
handshake runs under the connection's handshake deadline (:class:`_Handshake`),
before the WebSocket upgrade is read. Such connections are ``secure``, and keep
the socket fast paths: what the outbox writes is sealed as it becomes wire bytes
(triochat/transport/tls_direct.py).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sqlite3
import ssl
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING

import trio
from wsproto import ConnectionType
from wsproto.connection import Connection as Protocol

from triochat.errors import (
    CertificateError,
    ConnectionLost,
    ListenError,
    RedisError,
    StoreError,
    WrongPort,
)
from triochat.protocol import ErrorCode, encode, rules
from triochat.protocol.events import Error
from triochat.server.accounts import Accounts, AccountStore, LocalAccounts
from triochat.server.auth import Guard
from triochat.server.config import ServerConfig
from triochat.server.hub import Hub
from triochat.server.limits import (
    REFUSE_TIMEOUT_S,
    REFUSING_MAX,
    Claim,
    ConnectionLimits,
    Refusal,
)
from triochat.server.metrics import Stats, registry_for, serve_metrics
from triochat.server.outbox import Flusher
from triochat.server.redis_url import parse_redis_url
from triochat.server.session import Loader, Session
from triochat.server.store import (
    HistoryStore,
    Opened,
    RoomLoader,
    commit_once,
    open_store,
    run_committer,
)
from triochat.server.turns import JoinTurns
from triochat.transport.base import (
    Connection,
    hostport,
    http_refusal,
    url_scheme,
    write_without_waiting,
)
from triochat.transport.release import linger, release
from triochat.transport.tcp import StreamConnection
from triochat.transport.tls import server_context
from triochat.transport.tls_direct import (
    TLSEngine,
    TLSStream,
    TLSStreamConnection,
    TLSWsprotoConnection,
)
from triochat.transport.upgrade import (
    Answers,
    Origins,
    Request,
    Verdict,
    answer,
    receive_request,
    switching_protocols,
)
from triochat.transport.wsproto_ws import WsprotoConnection

if TYPE_CHECKING:
    from triochat.server.relay import Relay

log = logging.getLogger(__name__)

Handler = Callable[[trio.SocketStream, str, Claim], Awaitable[Connection | None]]
"""Opens one accepted connection (its handshake, if any): the peer's connection, or
None if it got an answer instead or left. Also given the peer's address (for logs)
and what the connection holds against the connection limits."""

ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
"""accept() failures that mean "full for now", not "broken" (the same set as trio's)."""
ACCEPT_GONE_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})
"""accept() failures that concern only the connection taken, which is gone (as trio's)."""
ACCEPT_RETRY_S = 0.1
ACCEPT_BATCH = 64
"""Connections taken from the kernel's queue at once, after the one a wake-up brought."""
ACCEPT_REMIND_S = 10.0
"""While accepting keeps failing, one reminder this often (the retries are every 0.1 s)."""


@dataclass(eq=False)
class Server:
    """A running server, as handed out by ``await nursery.start(serve, config)``."""

    config: ServerConfig
    hub: Hub
    flusher: Flusher
    urls: list[str] = field(default_factory=list)
    """``ws://host:port`` and ``tcp://host:port`` (``wss://``, ``tls://`` with TLS),
    one per bound listener."""
    tls: ssl.SSLContext | None = None
    """Both listeners' TLS context; None: plaintext."""
    _stop: trio.Event = field(default_factory=trio.Event)
    _sessions: set[Session] = field(default_factory=set)
    _handshakes: set[_Handshake] = field(default_factory=set)
    _failure: StoreError | None = None
    """Why the server stopped on its own, raised by :func:`serve` once it has stopped."""
    wrong_port: dict[str, bytes] = field(default_factory=dict)
    """Per listener scheme, the one ``error{wrong_port}`` line for a peer that speaks
    the other listener's protocol there (see :func:`wrong_port_line`)."""
    tls_required: dict[str, bytes] = field(default_factory=dict)
    """Per listener scheme, the ``error{tls_required}`` line for a peer that speaks
    plaintext to a TLS listener (see :func:`tls_required_line`)."""
    http: Answers = field(init=False)
    """The WebSocket port's HTTP answers (all but the upgrade), made once."""
    limits: ConnectionLimits = field(init=False)
    origins: Origins = field(init=False)
    """Which browser origins may upgrade (``allowed_origins`` plus the Host's own)."""
    loader: Loader | None = None
    """Brings rooms in from the history database (or Redis) before they are joined; None
    without one."""
    relay: Relay | None = None
    """The node's link to Redis (``--redis``); None for a server alone."""
    store: HistoryStore | None = None
    """The history database, without ``--redis``; None when history is in memory."""
    stats: Stats = field(default_factory=Stats)
    """What the server counts for its metrics (triochat/server/metrics.py)."""
    metrics_url: str | None = None
    """``http://HOST:PORT/metrics`` when ``metrics_port`` is set."""
    guard: Guard | None = None
    """Accounts and tokens (triochat/server/auth.py); every session asks it who it may be."""
    turns: JoinTurns = field(init=False)
    """The turns every session's joins into large rooms wait for."""

    def __post_init__(self) -> None:
        self.limits = ConnectionLimits(self.config)
        self.turns = JoinTurns(self.hub)
        self.origins = Origins.of(self.config.allowed_origins)

    def url(self, scheme: str) -> str:
        """The first listener URL with ``scheme`` (``ws``, ``tcp``, ``wss`` or ``tls``)."""
        found = next((u for u in self.urls if u.startswith(f"{scheme}://")), None)
        if found is None:
            raise ValueError(f"no {scheme}:// listener; this server has {', '.join(self.urls)}")
        return found

    def sessions(self) -> list[Session]:
        """The sessions now open (greeted or not)."""
        return list(self._sessions)

    @property
    def connections(self) -> int:
        """Connections with a session (handshaken or waiting for ``hello``)."""
        return len(self._sessions)

    def stop(self) -> None:
        """Begin an orderly shutdown; :func:`serve` returns once it is done."""
        self._stop.set()

    def ready(self) -> bool:
        """Whether what the server needs answers (``/readyz``): with ``--redis``, Redis's
        last heartbeat went through."""
        return self.relay is None or self.relay.healthy

    def new_history(self, server_id: str) -> None:
        """Redis lost the shared history: every client is closed, to come back (here or
        on another node) to a ``welcome`` whose new ``server_id`` says it was not kept."""
        self.hub.server_id = server_id
        for session in list(self._sessions):
            session.shutdown()

    def fail(self, exc: StoreError) -> None:
        """Stop in order because of ``exc``, which :func:`serve` then raises."""
        self._failure = self._failure or exc
        self.stop()


async def serve(
    config: ServerConfig, *, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run a server until :meth:`Server.stop`; ``task_status`` gets the :class:`Server`.

    Start-up failures (:class:`CertificateError`, :class:`ListenError`,
    :class:`StoreError`) are raised before any task starts, so they come out
    bare, not in an exception group.
    A history database that fails later stops the server in order (clients get
    the shutdown close) and its :class:`StoreError` is raised after that.
    """
    tls = tls_context(config)
    rules.load_tables()
    opened = await open_store(config.db_path, config.retention) if config.db_path else None
    store = opened.store if opened else None
    relay = await open_relay(config) if config.redis_url else None
    server: Server | None = None
    guard: Guard | None = None
    try:
        guard = Guard(config, await _accounts(config, relay))
        hub = _hub(config, opened, relay)
        server = Server(
            config=config,
            hub=hub,
            flusher=Flusher(config.batch_turns, max(1, config.outbox_events // 4)),
            guard=guard,
            tls=tls,
        )
        if store is not None:
            server.loader = RoomLoader(hub, store, server.fail)
            server.store = store
        if relay is not None:
            server.loader = server.relay = relay
            relay.on_lost = server.new_history
            relay.flusher = server.flusher
        hub.on_fanout = server.flusher.mark_group
        hub.on_presence = server.flusher.mark_presence
        listeners = await _open_all(server)
        metrics = await _open_metrics(server, listeners)
        _log_start(server)
        async with trio.open_nursery() as background:
            background.start_soon(server.flusher.run)
            if metrics:
                registry = registry_for(server)
                for listener in metrics:
                    background.start_soon(serve_metrics, listener, registry)
            if store is not None:
                background.start_soon(_commit_or_stop, server, store)
            if relay is not None:
                background.start_soon(relay.run)
            await _serve(server, listeners, task_status)
            background.cancel_scope.cancel()
        if server._failure is not None:
            raise server._failure
    finally:
        if guard is not None:
            guard.close()
        if relay is not None:
            with trio.CancelScope(shield=True):
                await relay.stop()  # the goodbyes' leaves, the nicks, the node's lease
                await relay.bus.close()
        if store is not None:
            with trio.CancelScope(shield=True):
                # Goodbyes (left{shutdown}) are history too; after a failed write
                # they are not: that group's rows are gone, and seq must not skip them.
                if server is not None and server._failure is None:
                    await commit_once(server.hub, store)
                await trio.to_thread.run_sync(store.close)


async def _open_metrics(server: Server, listeners: Listeners) -> list[trio.SocketListener]:
    """The ``/metrics`` listeners (one per address family), if the config asks for them;
    the first one's URL goes in ``metrics_url``. If they cannot open, nor do the others."""
    config = server.config
    if config.metrics_port is None:
        return []
    try:
        opened = await _listen("http", config.metrics_host, config.metrics_port)
    except ListenError:
        for _, _, group in listeners:
            for listener in group:
                await listener.aclose()
        raise
    server.metrics_url = f"http://{_endpoint(opened[0])}/metrics"
    return opened


def _log_start(server: Server) -> None:
    config = server.config
    if config.redis_url is not None:
        history = f"redis {parse_redis_url(config.redis_url).shown}"
    else:
        history = config.db_path or "memory only"
    log.info(
        "serving %s; history: %s; retention %d events a room; at most %s connections,"
        " %d per address, %d rooms",
        " ".join(server.urls),
        history,
        config.retention,
        server.limits.max_connections,
        config.max_connections_per_ip,
        config.max_rooms,
        extra={
            "event": "start",
            "listeners": server.urls,
            "history": history,
            "retention": config.retention,
            "max_connections": server.limits.max_connections,
            "max_connections_per_ip": config.max_connections_per_ip,
            "max_rooms": config.max_rooms,
        },
    )


async def open_relay(config: ServerConfig) -> Relay:
    """Connect to the shared Redis and announce this node; :class:`RedisError` if it can't.

    The client library is imported here: a server alone never loads it."""
    from triochat.server.redis_bus import Bus
    from triochat.server.relay import Relay

    assert config.redis_url is not None
    bus = await Bus.connect(
        parse_redis_url(config.redis_url),
        cluster=config.redis_cluster,
        cafile=config.redis_cafile,
        debug=logging.getLogger("glide").isEnabledFor(logging.DEBUG),
    )
    relay = Relay(
        bus, config.node_id or uuid.uuid4().hex[:12], config.redis_lease, config.redis_lease / 5
    )
    try:
        await relay.start()
    except RedisError:
        await bus.close()
        raise
    log.info("redis %s: node %s, history %s", bus.target.shown, relay.node, relay.history_id)
    return relay


def _hub(config: ServerConfig, opened: Opened | None, relay: Relay | None) -> Hub:
    if relay is not None:
        from triochat.server.shared import SharedHub

        return SharedHub(config, relay)
    if opened is not None:
        return Hub(config, durable=True, server_id=opened.server_id)
    return Hub(config)


async def _accounts(config: ServerConfig, relay: Relay | None) -> Accounts:
    """Redis's accounts when nodes share rooms, else the data file's (or memory's)."""
    if relay is not None:
        from triochat.server.redis_accounts import RedisAccounts

        return RedisAccounts(relay.bus)
    return LocalAccounts(await open_accounts(config.accounts_path))


async def open_accounts(path: str | None) -> AccountStore:
    """The accounts table of ``path`` (made if missing); in memory if None."""
    try:
        return await trio.to_thread.run_sync(AccountStore, path)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open accounts database {path}: {exc}") from None


def tls_context(config: ServerConfig) -> ssl.SSLContext | None:
    """The listeners' TLS context, or None without a certificate.

    :class:`CertificateError` if only one of ``certfile`` and ``keyfile`` is
    given, or they cannot be loaded together.
    """
    if config.certfile is None and config.keyfile is None:
        return None
    if config.certfile is None or config.keyfile is None:
        raise CertificateError("TLS needs both a certificate (--certfile) and its key (--keyfile)")
    return server_context(config.certfile, config.keyfile)


async def _commit_or_stop(server: Server, store: HistoryStore) -> None:
    """The committer; if the database fails, the server stops.

    Without a database that takes writes it could only hold every room event
    (nobody may hear of one that is not saved) until memory ran out.
    """
    try:
        await run_committer(server.hub, store, server.flusher)
    except StoreError as exc:
        # One line for the operator: the message says it all, a traceback would not.
        log.error("%s; stopping", exc)  # noqa: TRY400
        server.fail(exc)


async def _serve(
    server: Server,
    listeners: Listeners,
    task_status: trio.TaskStatus[Server],
) -> None:
    config = server.config
    async with trio.open_nursery() as connections:
        async with trio.open_nursery() as listening:
            for scheme, handler, group in listeners:
                for listener in group:
                    listening.start_soon(
                        _accept_loop, server, scheme, handler, listener, connections
                    )
            task_status.started(server)
            await server._stop.wait()
            listening.cancel_scope.cancel()
        log.info("stopping: %d connections to close", len(server._sessions))
        connections.cancel_scope.deadline = trio.current_time() + config.drain_timeout
        for handshake in server._handshakes:
            handshake.stop(config.close_timeout)
        sessions = list(server._sessions)
        for session in sessions:
            session.announce_shutdown()
        for session in sessions:
            session.shutdown()


Listeners = list[tuple[str, Handler, list[trio.SocketListener]]]
"""Per scheme (``ws``, ``tcp``), its handler and its listeners (one per address family)."""


async def _open_all(server: Server) -> Listeners:
    config = server.config
    wanted: list[tuple[str, int | None, Handler]] = [
        ("ws", config.port, partial(_open_websocket, server)),
        ("tcp", config.tcp_port, partial(_open_tcp, server)),
    ]
    opened: Listeners = []
    try:
        for scheme, port, handler in wanted:
            if port is None:
                continue
            group = await _listen(scheme, config.host, port)
            opened.append((scheme, handler, group))
            shown = url_scheme(scheme, secure=server.tls is not None)
            server.urls += [f"{shown}://{_endpoint(lst)}" for lst in group]
        for scheme in ("ws", "tcp"):
            server.wrong_port[scheme] = wrong_port_line(scheme, server.urls)
            server.tls_required[scheme] = tls_required_line(scheme, server.urls)
        server.http = Answers(not_websocket_text(server.urls), server.wrong_port["ws"])
    except BaseException:
        for _, _, group in opened:
            for lst in group:
                await trio.aclose_forcefully(lst)
        raise
    return opened


async def _listen(scheme: str, host: str, port: int) -> list[trio.SocketListener]:
    """Bind ``host:port`` (SO_REUSEADDR, as trio does); a failure is one readable line."""
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {host}: host not found ({exc.strerror})") from None
    except OSError as exc:
        why = {
            errno.EADDRINUSE: "address already in use",
            errno.EADDRNOTAVAIL: "address not available on this machine",
            errno.EACCES: "permission denied",
        }.get(exc.errno or 0, exc.strerror or str(exc))
        raise ListenError(f"cannot listen for {scheme} on {hostport(host, port)}: {why}") from None


def _endpoint(listener: trio.SocketListener) -> str:
    host, port = listener.socket.getsockname()[:2]
    return hostport(host, port)


def _peer(stream: trio.SocketStream) -> tuple[str, str] | None:
    """The peer's host, and ``host:port`` for logs; None if it is gone already."""
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return None
    return host, hostport(host, port)


async def _accept_loop(
    server: Server,
    scheme: str,
    handler: Handler,
    listener: trio.SocketListener,
    connections: trio.Nursery,
) -> None:
    """``trio.serve_listeners`` for one listener, without its per-connection wrapper.

    That wrapper's task frame and ``aclose_forcefully`` cost memory and time on
    every connection, and :func:`_contained` releases the stream anyway. Running
    out of descriptors or memory is waited out, as trio does; the server keeps
    serving the connections it has.
    """
    starved = _Starved()
    async with listener:
        with _ready_queue(listener) as queue:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                        raise
                    starved.failed(exc)
                    await trio.sleep(ACCEPT_RETRY_S)
                    continue
                if starved.since is not None:
                    starved.recovered()
                _admit(server, scheme, handler, stream, connections)
                for stream in _take_ready(queue):
                    _admit(server, scheme, handler, stream, connections)


@contextmanager
def _ready_queue(listener: trio.SocketListener) -> Iterator[socket.socket]:
    """The listening socket's queue as a plain socket, to take what is ready without a
    checkpoint per connection (``listener.accept()`` yields after each one)."""
    queue = socket.socket(fileno=os.dup(listener.socket.fileno()))
    with queue:
        queue.setblocking(False)
        yield queue


def _take_ready(queue: socket.socket) -> Iterator[trio.SocketStream]:
    """Up to :data:`ACCEPT_BATCH` connections the kernel has completed, without waiting.

    Taking one connection per scheduler tick put a newcomer behind every connection
    queued before it, each a whole tick of everyone else's work later: a join storm
    kept an innocent client from its welcome for most of the storm. Taken together,
    the connections' tasks share the ticks that follow.
    """
    for _ in range(ACCEPT_BATCH):
        try:
            conn, _ = queue.accept()
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno in ACCEPT_GONE_ERRNOS:
                continue
            return  # out of descriptors, or worse: listener.accept() meets it next, and says so
        yield trio.SocketStream(trio.socket.from_stdlib_socket(conn))


def _admit(
    server: Server,
    scheme: str,
    handler: Handler,
    stream: trio.SocketStream,
    connections: trio.Nursery,
) -> None:
    """Serve ``stream`` if the connection limits allow it, else refuse it.

    A trusted proxy's WebSocket connection is counted against its client's
    address only once the upgrade request names that client.
    """
    peer = _peer(stream)
    if peer is None:
        stream.socket.close()
        return
    host, remote = peer
    limits = server.limits
    why = limits.enter()
    if why is not None:
        _refuse(server, scheme, stream, why, connections)
        return
    if scheme == "ws" and limits.trusts(host):
        claim = Claim(proxy=host)
    else:
        address = limits.claim(host)
        if isinstance(address, Refusal):
            limits.leave(None)
            _refuse(server, scheme, stream, address, connections)
            return
        claim = Claim(address) if address is not None else Claim.EXEMPT
    connections.start_soon(_contained, server, handler, stream, host, remote, claim)


def _refuse(
    server: Server,
    scheme: str,
    stream: trio.SocketStream,
    why: Refusal,
    connections: trio.Nursery,
) -> None:
    """Answer a refused connection at once (an HTTP response or one line) and close it.

    The answer fits a fresh socket's buffer, so it is written without waiting.
    Up to ``REFUSING_MAX`` refusals then wait briefly for their peer (see
    :func:`_linger`); beyond that they close at once: under a flood, a reset
    is cheaper than a descriptor.
    """
    limits = server.limits
    server.stats.refused[why.name.lower()] += 1
    unsent = write_without_waiting(stream.socket, limits.answers[scheme][why])
    if unsent or limits.refusing >= REFUSING_MAX:
        stream.socket.close()
        return
    limits.refusing += 1
    connections.start_soon(_linger, server, stream)


async def _linger(server: Server, stream: trio.SocketStream) -> None:
    """Close a refused connection once its peer has read the answer and closed (:func:`linger`)."""
    try:
        with trio.move_on_after(REFUSE_TIMEOUT_S):
            await linger(stream)
    finally:
        server.limits.refusing -= 1
        stream.socket.close()


class _Starved:
    """The log of one listener running out of descriptors or memory.

    One warning when accepting starts to fail, a reminder every
    ``ACCEPT_REMIND_S`` while it goes on, and one line when it ends: an
    operator sees the episode and its length, not a line per retry.
    """

    def __init__(self) -> None:
        self.since: float | None = None
        """When accepting started to fail; None while it works."""
        self._reminded = 0.0

    def failed(self, exc: OSError) -> None:
        now = trio.current_time()
        if self.since is None:
            self.since = self._reminded = now
            log.warning("cannot accept: %s; retrying every %g s", exc.strerror, ACCEPT_RETRY_S)
        elif now - self._reminded >= ACCEPT_REMIND_S:
            self._reminded = now
            log.warning("still cannot accept after %.0f s: %s", now - self.since, exc.strerror)

    def recovered(self) -> None:
        assert self.since is not None
        log.warning("accepting again after %.1f s", trio.current_time() - self.since)
        self.since = None


# --- per connection -------------------------------------------------------------


async def _contained(
    server: Server,
    handler: Handler,
    stream: trio.SocketStream,
    host: str,
    remote: str,
    claim: Claim,
) -> None:
    """Run one connection; whatever it raises stops here and ends only this connection.

    The session runs in this frame, not in the handler's: an idle connection holds
    every suspended frame of its task, so the task is kept shallow.
    """
    try:
        conn = await handler(stream, remote, claim)
        if conn is not None:
            session = _session(server, conn, claim, host)
            server._sessions.add(session)
            try:
                await session.run()
            finally:
                server._sessions.discard(session)
    except* (
        ConnectionLost,
        WrongPort,
        trio.BrokenResourceError,
        trio.ClosedResourceError,
    ) as group:
        log.debug("%s: connection lost: %r", remote, group.exceptions)
    except* Exception as group:
        # Library failures land here too: one line, details at debug level.
        log.warning("%s: connection failed: %r", remote, group.exceptions)
        log.debug("%s: connection failure details", remote, exc_info=group)
    finally:
        server.limits.leave(claim.address)
        await release(stream)


def _first_url(kind: str, urls: list[str]) -> str | None:
    """The first listener URL of ``kind`` (``ws`` or ``tcp``), with or without TLS."""
    prefixes = tuple(f"{url_scheme(kind, secure=tls)}://" for tls in (False, True))
    return next((url for url in urls if url.startswith(prefixes)), None)


def tls_required_line(scheme: str, urls: list[str]) -> bytes:
    """What a peer that speaks plaintext to the ``scheme`` listener of a TLS server is told."""
    here = _first_url(scheme, urls) or f"{url_scheme(scheme, secure=True)}://"
    text = f"this port speaks TLS: connect with {here}"
    return encode(Error(code=ErrorCode.TLS_REQUIRED, message=text))


def wrong_port_line(scheme: str, urls: list[str]) -> bytes:
    """What a peer on the ``scheme`` listener is told when it speaks the other protocol."""
    there = _first_url("tcp" if scheme == "ws" else "ws", urls)
    if scheme == "tcp":
        text = "this is triochat's TCP port, for NDJSON lines, not HTTP; " + (
            f"WebSocket clients connect to {there}" if there else "this server has no WebSocket"
        )
    else:
        text = "this is triochat's WebSocket port; " + (
            f"line clients connect to {there}" if there else "this server has no TCP listener"
        )
    return encode(Error(code=ErrorCode.WRONG_PORT, message=text))


def not_websocket_text(urls: list[str]) -> str:
    """The body of the 426 a plain HTTP request on the WebSocket port gets."""
    tcp = _first_url("tcp", urls)
    there = f"; line clients (NDJSON) connect to {tcp}" if tcp else ""
    return f"this is triochat's WebSocket endpoint: connect with a WebSocket client{there}"


async def _open_tcp(
    server: Server, stream: trio.SocketStream, remote: str, claim: Claim
) -> Connection | None:
    """One connection to the TCP port; with TLS, once its TLS handshake is done in time."""
    config = server.config
    if server.tls is None:
        return StreamConnection(
            stream,
            max_line=config.max_line,
            message_timeout=config.message_timeout,
            remote=remote,
            http_answer=server.wrong_port["tcp"],
        )
    engine = TLSEngine(server.tls, stream, remote)
    with _Handshake(server, remote, "TLS"):
        await engine.handshake(partial(_plaintext_answer, server.tls_required["tcp"]))
        return TLSStreamConnection(
            engine,
            max_line=config.max_line,
            message_timeout=config.message_timeout,
            remote=remote,
            http_answer=server.wrong_port["tcp"],
        )
    return None  # out of time


async def _open_websocket(
    server: Server, socket_stream: trio.SocketStream, remote: str, claim: Claim
) -> Connection | None:
    """One connection to the WebSocket port: its HTTP request answered; the WebSocket
    if that was an upgrade. With TLS, the TLS handshake comes first, under the same deadline."""
    with _Handshake(server, remote, "WebSocket") as handshake:
        if server.tls is None:
            return await _upgrade(server, socket_stream, remote, claim, handshake)
        # A peer that does not speak TLS (or too old a TLS) fails here: ConnectionLost.
        engine = TLSEngine(server.tls, socket_stream, remote)
        await engine.handshake(partial(_plaintext_answer, server.tls_required["ws"]))
        return await _upgrade(server, TLSStream(engine), remote, claim, handshake)
    return None  # out of time


def _plaintext_answer(line: bytes, first: bytes) -> bytes:
    """The answer to plaintext on a TLS port: ``line``, in an HTTP 400 if ``first``
    (the peer's first bytes) may be an HTTP request (a ``ws://`` client)."""
    return line if first.startswith(b"{") else http_refusal(400, line)


async def _upgrade(
    server: Server,
    stream: trio.SocketStream | TLSStream,
    remote: str,
    claim: Claim,
    handshake: _Handshake,
) -> WsprotoConnection | None:
    """Read and judge the opening request (transport/upgrade.py); the connection after a 101.

    None if the peer left first, or got another answer (and a lingering close).
    A trusted proxy's upgrade is counted against the client it names first.
    """
    source = stream.socket if isinstance(stream, trio.SocketStream) else stream
    received = await receive_request(source, handshake.begin)
    if received is None:
        return None  # left before a whole request
    if isinstance(received, Verdict):  # not HTTP, or not a request HTTP allows
        await _close_with(server, stream, remote, received, server.http.wire(received))
        return None
    request, trailing = received
    verdict = answer(
        request, draining=server._stop.is_set(), origins=server.origins, ready=server.ready()
    )
    if verdict is not Verdict.UPGRADE:
        wire = server.http.wire(verdict, head_only=request.head_only)
        await _close_with(server, stream, remote, verdict, wire)
        return None
    refusal = _refuse_forwarded(server, claim, request) if claim.proxy else None
    if refusal is not None:
        await _close_with(server, stream, remote, verdict, refusal)
        return None
    await _write(stream, switching_protocols(request))
    protocol = Protocol(ConnectionType.SERVER)  # OPEN: the handshake was ours
    if trailing:
        protocol.receive_data(trailing)  # frames sent right behind the request
    config = server.config
    if isinstance(stream, TLSStream):
        return TLSWsprotoConnection(
            stream.engine,
            protocol,
            max_line=config.max_line,
            max_message=_max_message(config),
            message_timeout=config.message_timeout,
            remote=remote,
        )
    return WsprotoConnection(
        stream,
        protocol,
        max_line=config.max_line,
        max_message=_max_message(config),
        message_timeout=config.message_timeout,
        remote=remote,
    )


async def _write(stream: trio.abc.Stream, data: bytes) -> None:
    """A fresh socket takes an answer whole: written without waiting, a checkpoint saved.

    Other streams (TLS) are written the ordinary way.
    """
    rest = (
        write_without_waiting(stream.socket, data)
        if isinstance(stream, trio.SocketStream)
        else data
    )
    if rest:
        await stream.send_all(rest)


async def _close_with(
    server: Server, stream: trio.abc.Stream, remote: str, verdict: Verdict, wire: bytes
) -> None:
    """Send one whole answer, then close once the peer has read it (:func:`linger`).

    The peer may have sent more than we read (a body, its first frames): closing
    with it unread would reset the connection, maybe before the answer is read.
    """
    log.debug("%s: answered the WebSocket port's request: %s", remote, verdict.name)
    await _write(stream, wire)
    with trio.move_on_after(server.config.close_timeout):
        await linger(stream)


def _refuse_forwarded(server: Server, claim: Claim, request: Request) -> bytes | None:
    """For a trusted proxy's connection, count it against the client it names.

    The client is taken from ``X-Forwarded-For`` (the proxy itself if there is
    none). Returns the 429/503 answer if that client may not connect, else None.
    """
    assert claim.proxy is not None
    values = [v.decode("latin-1") for v in request.fields.get(b"x-forwarded-for", [])]
    claim.client = server.limits.forwarded_client(claim.proxy, values)
    address = server.limits.claim(claim.client)
    if isinstance(address, Refusal):
        return server.limits.answers["ws"][address]
    claim.address = address
    return None


def _max_message(config: ServerConfig) -> int:
    """A whole WebSocket message may hold one line plus framing slack.

    Longer lines are refused per line with ``too_large``, longer messages with close code 1009.
    """
    return config.max_line * 4


class _Handshake:
    """One connection between accept and its session (or its answer), under its
    deadline: ``handshake_timeout`` from accept, slowloris protection. On the
    WebSocket port that is the TLS handshake (if any) and the upgrade; on the
    TCP port with TLS, the TLS handshake.

    A context manager, so that the server can find it while it lasts (``stop``).
    """

    __slots__ = ("_remote", "_server", "_what", "began", "scope")

    def __init__(self, server: Server, remote: str, what: str) -> None:
        self._server = server
        self._remote = remote
        self._what = what
        """Which handshake, for the log."""
        self.scope = trio.move_on_after(server.config.handshake_timeout)
        self.began = False
        """Bytes of its request have arrived."""

    def __enter__(self) -> _Handshake:
        self.scope.__enter__()
        self._server._handshakes.add(self)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self._server._handshakes.discard(self)
        swallowed = self.scope.__exit__(kind, exc, tb)
        if self.scope.cancelled_caught:
            log.debug("%s: no %s handshake in time", self._remote, self._what)
        return swallowed

    def begin(self) -> None:
        self.began = True

    def stop(self, grace: float) -> None:
        """The server is stopping: close at once a peer that has sent nothing yet.

        One whose request is on its way gets ``grace`` more seconds to finish it,
        and so hears 503 (a load balancer's probe learns we are draining) rather
        than a bare close.
        """
        if self.began:
            self.scope.deadline = min(self.scope.deadline, trio.current_time() + grace)
        else:
            self.scope.cancel()


def _session(server: Server, conn: Connection, claim: Claim, host: str) -> Session:
    """A session for ``conn`` from ``host`` (or the client a trusted proxy named); told
    at once that the server is stopping, if it is."""
    session = Session(
        conn,
        server.hub,
        server.config,
        server.flusher,
        address=claim.address,
        loader=server.loader,
        stats=server.stats,
        guard=server.guard,
        host=claim.client or host,
        turns=server.turns,
    )
    if server._stop.is_set():
        session.shutdown()
    return session


__all__ = ["Server", "serve"]
