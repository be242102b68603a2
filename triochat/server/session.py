"""One client's life on the server: handshake, reader, writer, keepalive, goodbye.

Theory of operation
-------------------
A session runs up to two tasks in its own nursery:

* the **reader** (the session's main task) decodes lines, applies flood
  control and hands events to the hub; before ``hello`` it only accepts
  ``hello`` and gives up at the handshake deadline (a deadline on the io
  scope). It is also the keepalive: a cancel scope per stretch of reading
  (not per receive) notices silence, which gets a TCP ``ping`` or a
  short-lived WebSocket Ping probe task;
* the **writer** drains the outbox when a write without waiting could not
  take everything; it is started the first time that happens (see
  :mod:`triochat.server.outbox`, which owns every write to the socket).

Every way a session ends goes through :meth:`Session.close`, exactly once: it
records the reason, seals the outbox, detaches from the hub (so the room sees
``left`` at once, not when the socket is finally gone), and stops the reader
and any probe. With ``flush`` the writer sends what is still queued and the connection
closes politely (bounded by ``close_timeout``); without it, the writer is
cancelled, what was queued is dropped, and only the goodbye is tried. A slow consumer is closed from
*another* session's task (the one whose fan-out found the outbox full), which
is why close() is synchronous and works by cancelling scopes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from functools import partial
from typing import Protocol

import trio

from triochat.errors import ConnectionLost, StoreError, WrongPort
from triochat.protocol import ErrorCode, ProtocolError, decode_client, encode, rules
from triochat.protocol.events import (
    ClientEvent,
    Dm,
    Error,
    Hello,
    History,
    Join,
    LeftReason,
    ListRooms,
    Nick,
    Notice,
    Part,
    Ping,
    Pong,
    Quit,
    Ref,
    Register,
    Say,
    SetTopic,
    Welcome,
    Who,
)
from triochat.server.auth import Guard, Identity, Peer
from triochat.server.config import ServerConfig
from triochat.server.hub import Hub, Member
from triochat.server.limits import Address, is_loopback
from triochat.server.metrics import Stats
from triochat.server.outbox import Flusher, Outbox, OutboxClosed
from triochat.server.ratelimit import TokenBucket
from triochat.server.turns import JoinTurns
from triochat.transport.base import ENDS_CONNECTION, CloseCode, Connection, url_scheme

log = logging.getLogger(__name__)

KEEPALIVE_TOKEN = "keepalive"


class Loader(Protocol):
    """Brings rooms into the hub before they are joined (a history database, or Redis)."""

    async def load(self, names: Iterable[str]) -> None: ...


class Session:
    """One connected client. Implements :class:`triochat.server.hub.Peer`."""

    def __init__(
        self,
        conn: Connection,
        hub: Hub,
        config: ServerConfig,
        flusher: Flusher | None = None,
        *,
        address: Address | None = None,
        loader: Loader | None = None,
        stats: Stats | None = None,
        guard: Guard | None = None,
        host: str = "",
        turns: JoinTurns | None = None,
    ) -> None:
        self._conn = conn
        self._turns = turns or JoinTurns(hub)
        """Joins into large rooms wait for a turn, shared by the server's sessions."""
        self._guard = guard
        """Judges passwords and tokens; None: no accounts, everyone is a guest."""
        self._host = host
        """The client's address (behind a trusted proxy, the client it names)."""
        self._identity = Identity("")
        """What the client proved; every nick it uses must pass :meth:`Guard.check_rename`."""
        self._loader = loader
        self._stats = stats or Stats()
        """Brings stored rooms into the hub before a join; None without a store."""
        self._address = address
        """The client's address, whose join bucket its connections share; None: exempt."""
        self._hub = hub
        self._config = config
        outbox = Outbox(
            config.outbox_events,
            config.outbox_bytes,
            flusher=flusher,
            direct=conn.direct,
            frame=conn.frame,
            write_lines=conn.write_lines,
            on_overflow=self.evict,
            on_replay_sent=self._replay_sent,
        )
        self._outbox = outbox
        # The Peer methods are the outbox's own: one Python frame less on paths
        # taken once per recipient.
        self.deliver: Callable[..., bool] = outbox.put
        self.queue: Callable[[bytes], object] = outbox.queue
        self.flush: Callable[[], bool] = outbox.flush
        self._bucket = TokenBucket(config.rate_limit, config.burst, trio.current_time())
        self._member: Member | None = None
        self._reason: LeftReason | None = None
        self._close_code = CloseCode.NORMAL
        self._peer_gone = False
        """The connection failed under us (EOF, reset): no goodbye can reach the peer."""
        self._io_scope = trio.CancelScope()
        """The reader's current stretch (see :meth:`_reading`); :meth:`close` cancels it."""
        self._nursery: trio.Nursery | None = None
        self._writer_deadline = math.inf
        """When the writer must stop; the session nursery's deadline once it is open."""
        self._probe: trio.CancelScope | None = None
        """The keepalive Ping in flight, if any (WebSocket only)."""
        self._started = 0.0
        """When its hello was accepted (trio's clock), for the log."""
        self._ended_by: str | None = None
        """The error code that ended the session (``too_large``...), for the log."""

    @property
    def nick(self) -> str | None:
        return self._member.nick if self._member else None

    @property
    def reason(self) -> LeftReason | None:
        """Why the session ended, once it is ending."""
        return self._reason

    # --- Peer -----------------------------------------------------------------

    def _replay_sent(self) -> None:
        if self._member is not None:
            self._hub.pump(self._member, written=True)

    def evict(self) -> None:
        self._stats.evictions += 1
        log.info(
            "%s: evicted, outbox full (%d queued)",
            self._conn.remote,
            len(self._outbox),
            extra={"event": "eviction", "remote": self._conn.remote, "nick": self.nick},
        )
        self.close(LeftReason.SLOW_CONSUMER, CloseCode.POLICY, flush=False)

    # --- ending -----------------------------------------------------------------

    def close(
        self, reason: LeftReason, code: CloseCode = CloseCode.NORMAL, *, flush: bool = True
    ) -> None:
        """End the session (idempotent; the first reason wins). Never blocks."""
        if self._reason is not None:
            return
        self._reason, self._close_code = reason, code
        # Sealed before detaching: a leaving client never gets its own ``left``
        # (the close is its confirmation), whether history is on disk or not.
        if flush:
            self._outbox.seal()
        else:
            self._outbox.abandon()
        if self._member is not None:
            self._hub.detach(self._member, reason)
        self._io_scope.cancel()
        if self._probe is not None:
            self._probe.cancel()
        # By now the reader is stopping, so the nursery's own scope bounds just
        # the writer (and a probe): one cancel scope less per connection.
        if flush:
            self._writer_deadline = trio.current_time() + self._config.close_timeout
        else:
            self._writer_deadline = -math.inf
        if self._nursery is not None:
            self._nursery.cancel_scope.deadline = self._writer_deadline

    def announce_shutdown(self) -> None:
        """Queue the ``shutting_down`` notice as the last thing this client will get.

        The server announces to everyone before it closes anyone, so no client
        sees other clients' ``left{shutdown}`` after its notice.
        """
        notice = Notice(code="shutting_down", text="the server is shutting down")
        self._outbox.put(encode(notice), last_word=True)
        self._outbox.seal()

    def shutdown(self) -> None:
        """The server is stopping: tell the client, flush, close with 1001."""
        self.announce_shutdown()
        self.close(LeftReason.SHUTDOWN, CloseCode.GOING_AWAY)

    @property
    def outbox_bytes(self) -> int:
        """What waits to be written to this client (metrics)."""
        return self._outbox.waiting_bytes

    @property
    def transport(self) -> str:
        """``ws``, ``wss``, ``tcp`` or ``tls``, as in the listener's URL."""
        kind = "ws" if self._conn.native_ping else "tcp"
        return url_scheme(kind, secure=self._conn.secure)

    def _log_end(self, nick: str) -> None:
        reason = self._ended_by or (self._reason or LeftReason.DISCONNECTED).value
        self._stats.sessions_ended[reason] += 1
        duration = round(trio.current_time() - self._started, 3)
        log.info(
            "%s: session end: %s over %s after %.1f s: %s",
            self._conn.remote,
            nick,
            self.transport,
            duration,
            reason,
            extra={
                "event": "session_end",
                "remote": self._conn.remote,
                "nick": nick,
                "transport": self.transport,
                "duration_s": duration,
                "reason": reason,
            },
        )

    # --- tasks ----------------------------------------------------------------

    async def run(self) -> None:
        """Serve the client until it leaves or is closed; the connection is released on return.

        A stranger gets no nursery: until its ``hello`` is accepted, what it is
        sent goes by direct writes, and what those cannot carry its reader writes
        before it reads on (:meth:`Outbox.write_owed`).
        A connection that never says hello (a probe, a scanner, a handshake
        benchmark) so costs one cancel scope, not three.
        """
        try:
            rest = None
            with _Failures(self):
                rest = await self._greet()
            if rest is not None:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.cancel_scope.deadline = self._writer_deadline
                    self._outbox.start(self._start_writer)
                    try:
                        with _Failures(self):  # inside: the nursery would wrap them in a group
                            await self._read_loop(rest)
                    finally:
                        # Once the body is done the nursery closes as soon as its last task
                        # ends, and other tasks (the flusher) may run before this one is
                        # back: from here on nothing may be started in it.
                        self._nursery = None
        finally:
            member = self._member
            if member is not None:
                self._hub.detach(member, self._reason or LeftReason.DISCONNECTED)
                self._log_end(member.nick)
            try:
                if member is not None:
                    with trio.move_on_after(self._config.close_timeout):
                        await self._hub.released(member)
                await self._say_goodbye()
            finally:
                # Nothing of an ended session may outlive it: whatever still refers to
                # it (a held delivery, a cycle the collector has not reached) holds no buffer.
                self._outbox.discard()
                self._member = None

    async def _greet(self) -> list[bytes] | None:
        """The lines after an accepted ``hello``; None if there was none in time."""
        with self._reading(trio.current_time() + self._config.handshake_timeout):
            return await self._await_hello()
        if self._reason is None:
            self._error(ErrorCode.HELLO_TIMEOUT, "no hello before the handshake deadline")
            self.close(LeftReason.DISCONNECTED, CloseCode.POLICY)
        return None

    def _start_writer(self) -> None:
        """Called by the outbox (from any task) the first time it needs its writer."""
        if self._nursery is not None:
            self._nursery.start_soon(self._write_loop)

    def _reading(self, deadline: float) -> trio.CancelScope:
        """A new stretch of reading that ends at ``deadline``, or when :meth:`close` cancels it.

        The reader holds one cancel scope at a time (the handshake deadline, a
        keepalive stretch, the wait for a ping's answer): one scope per
        connection fewer than a scope for closing plus one for time. A close
        that comes between stretches is seen here.
        """
        self._io_scope = trio.CancelScope(deadline=deadline)
        if self._reason is not None:
            self._io_scope.cancel()
        return self._io_scope

    def _fail(self, exc: ConnectionLost | WrongPort | ProtocolError) -> None:
        """The close that matches a peer's failure; called in the task that caught it.

        (Caught where raised: a nursery would wrap it in an ExceptionGroup.)
        """
        if isinstance(exc, ConnectionLost | WrongPort):  # nothing more to say to the peer
            log.debug("%s", exc)
            self._peer_gone = True
            self.close(LeftReason.DISCONNECTED, flush=False)
        else:  # too_large, message_timeout: framing is lost, so is the connection
            self._error(exc.code, exc.message)
            self._ended_by = exc.code
            self.close(LeftReason.DISCONNECTED, ENDS_CONNECTION.get(exc.code, CloseCode.POLICY))

    async def _await_hello(self) -> list[bytes]:
        """Read until a ``hello`` is accepted; return the lines that came after it."""
        while True:
            await self._outbox.write_owed(self._conn.stream)  # no writer task yet
            try:
                lines = await self._conn.receive_lines(self._outbox)
            except ProtocolError as exc:
                lines = self._skipped(exc)
            for index, line in enumerate(lines):
                event = self._decode(line)
                if event is None:
                    continue
                if not isinstance(event, Hello):
                    self._error(ErrorCode.HELLO_FIRST, "say hello first", _ref(event))
                    continue
                identity = await self._admit(event)
                if identity is None:
                    continue
                if not await self._reserve(identity.nick):
                    continue
                rooms, resume_after = self._rooms_of(event)
                async with self._turns.taken(rooms):
                    with self._hub.pinned(rooms):  # none is freed before its join
                        await self._load(rooms)
                        accepted = self._accept(identity, rooms, resume_after)
                if accepted:
                    return lines[index + 1 :]
                self._hub.unreserve(identity.nick)

    async def _read_loop(self, lines: list[bytes]) -> None:
        """Handle lines as they come until closed; a peer silent for
        ``keepalive_interval`` is checked on.

        The reader is the keepalive: no task per session waits for silence, and
        no cancel scope is spent per receive. One scope covers a stretch of
        reading; when its deadline passes and the peer was heard from since it
        began, a new one starts at the last time heard. Only real silence gets
        a check: TCP peers a ``ping`` they must answer within
        ``keepalive_timeout``, WebSocket peers a transport Ping from a
        short-lived probe task while reading goes on.
        """
        interval = self._config.keepalive_interval
        heard = trio.current_time()
        while True:
            with self._reading(heard + interval if interval > 0 else math.inf):
                while True:
                    for line in lines:
                        if self._reason is not None:  # closed by an earlier line: ignore the rest
                            break
                        event = self._decode(line)
                        if isinstance(event, Join):
                            async with self._turns.taken([event.room]):
                                await self._load([event.room])
                                if self._reason is not None:  # closed meanwhile: no ghost join
                                    break
                                self._handle(event)
                            continue
                        if isinstance(event, Who) and event.room is not None:
                            stored = self._hub.unloaded_for_who(event.room)
                            if stored:
                                await self._load(stored)
                        if isinstance(event, Register):
                            await self._register(event)
                            continue
                        if isinstance(event, Nick):
                            if await self._may_rename(event.nick, _ref(event)):
                                self._handle(event)
                                self._hub.unreserve(event.nick)  # unless renamed to it
                            continue
                        if event is not None:
                            self._handle(event)
                    try:
                        lines = await self._conn.receive_lines(self._outbox)
                    except ProtocolError as exc:
                        lines = self._skipped(exc)
                    heard = trio.current_time()
            lines = []
            if self._reason is not None:
                return
            if trio.current_time() < heard + interval:
                continue
            if self._conn.native_ping:
                if self._probe is None and self._nursery is not None:
                    self._nursery.start_soon(self._ping_probe)
                heard = trio.current_time()
                continue
            self._send(encode(Ping(token=KEEPALIVE_TOKEN)))
            with self._reading(trio.current_time() + self._config.keepalive_timeout):
                try:
                    lines = await self._conn.receive_lines(self._outbox)
                except ProtocolError as exc:
                    lines = self._skipped(exc)
                heard = trio.current_time()
                continue
            if self._reason is not None:
                return
            self._drop_silent()
            return

    async def _ping_probe(self) -> None:
        """One transport Ping; no Pong within ``keepalive_timeout`` ends the session."""
        with trio.CancelScope() as self._probe:
            with trio.move_on_after(self._config.keepalive_timeout):
                try:
                    await self._conn.ping(self._outbox)
                except ConnectionLost as exc:
                    self._fail(exc)
                    return
                self._probe = None
                return
            self._drop_silent()

    def _drop_silent(self) -> None:
        """End a session whose peer did not answer the keepalive in time.

        The peer may be alive and just not answering (a person on ``nc``), so it
        is told why before the close; ``close_timeout`` bounds that goodbye if it is gone.
        """
        log.info("%s: no answer to keepalive, dropping", self._conn.remote)
        timeout = self._config.keepalive_timeout
        self._error(ErrorCode.TIMEOUT, f"no answer to the keepalive ping within {timeout:g} s")
        self.close(LeftReason.TIMEOUT, CloseCode.GOING_AWAY)

    def _skipped(self, exc: ProtocolError) -> list[bytes]:
        """A receive that failed: re-raised if the stream is no longer usable, else
        the client is told and reading goes on (no lines).

        The receive is awaited at each call site rather than in a helper
        coroutine: an idle reader waits inside it, and every suspended
        coroutine frame is memory held per connection.
        """
        if exc.code in ENDS_CONNECTION:
            raise exc
        self._error(exc.code, exc.message)
        return []

    async def _write_loop(self) -> None:
        try:
            await self._outbox.drain(self._conn.stream)
        except OutboxClosed:
            pass
        except ConnectionLost as exc:
            log.debug("%s", exc)
            self._peer_gone = True
            self.close(LeftReason.DISCONNECTED, flush=False)

    async def _say_goodbye(self) -> None:
        """Write what the outbox still holds, then close politely (WebSocket close
        code, TCP FIN) unless the peer is already gone.

        Even when the outbox was abandoned (eviction, keepalive timeout) the close
        code is worth a try; ``close_timeout`` bounds it (with whatever is still
        queued: ``too_large``'s error line, then 1009) if the peer reads nothing.
        Control frames still pending (the answer to a peer's Close) go either way.
        """
        polite = not self._peer_gone
        try:
            if polite or not self._outbox.sent_all:
                await self._write_last(polite)
        finally:
            # No shield needed: a socket closes synchronously, and other streams'
            # release (aclose_forcefully) expects to be cancelled.
            await self._conn.abort()

    async def _write_last(self, polite: bool) -> None:
        """What the outbox still holds, then the goodbye if ``polite``; bounded by
        ``close_timeout``. A peer gone meanwhile ends it early."""
        goodbye = partial(self._conn.goodbye, self._close_code) if polite else bytes
        try:
            with trio.move_on_after(self._config.close_timeout):
                await self._outbox.finish(self._conn.stream, goodbye)
                if polite:
                    await self._conn.finish()
        except ConnectionLost as exc:
            log.debug("%s: %s", self._conn.remote, exc)

    # --- events ---------------------------------------------------------------

    def _decode(self, line: bytes) -> ClientEvent | None:
        """The event in ``line`` if it is valid and within the rate; else tell the client."""
        try:
            event = decode_client(line)
        except ProtocolError as exc:
            self._error(exc.code, exc.message)
            return None
        if not isinstance(event, Pong) and not self._bucket.take(trio.current_time()):
            self._stats.rate_limited += 1
            self._error(ErrorCode.RATE_LIMITED, "slow down: too many events", _ref(event))
            return None
        self._stats.events_in += 1
        return event

    async def _may_rename(self, nick: str, ref: Ref) -> bool:
        """Whether the guard lets this session take ``nick`` and the hub has reserved it
        (see :meth:`Hub.reserve`); if not, the client is told."""
        if self._guard is not None:
            try:
                await self._guard.check_rename(self._identity, rules.check_nick(nick))
            except ProtocolError as exc:
                self._error(exc.code, exc.message, ref)
                return False
        return await self._reserve(nick, ref)

    async def _reserve(self, nick: str, ref: Ref = None) -> bool:
        """Whether ``nick`` may be taken (see :meth:`Hub.reserve`); if not, the client is told."""
        try:
            await self._hub.reserve(nick)
        except ProtocolError as exc:
            self._error(exc.code, exc.message, ref)
            return False
        return True

    async def _load(self, rooms: list[str]) -> None:
        if self._loader is not None:
            await self._loader.load(rooms)

    def _rooms_of(self, hello: Hello) -> tuple[list[str], dict[str, int]]:
        """The rooms ``hello`` asks for (canonical, in order, within the per-client
        limit) and the resume points among them; the client is told of the rest."""
        resume = self._valid_rooms(list(hello.resume or {}))
        resume_after = {room: (hello.resume or {})[raw] for raw, room in resume.items()}
        wanted = list(resume_after) + list(self._valid_rooms(hello.rooms or []).values())
        rooms = list(dict.fromkeys(wanted or [rules.DEFAULT_ROOM]))
        if len(rooms) > self._config.max_rooms_per_client:
            self._error(
                ErrorCode.TOO_MANY_ROOMS, f"at most {self._config.max_rooms_per_client} rooms"
            )
            rooms = rooms[: self._config.max_rooms_per_client]
        return rooms, resume_after

    async def _admit(self, hello: Hello) -> Identity | None:
        """What ``hello`` proves (a guest, without a guard); None (client told) if nothing."""
        if self._guard is None:
            return Identity(hello.nick)
        try:
            rules.check_nick(hello.nick)
            return await self._guard.admit(hello.nick, hello.password, hello.token, self._peer())
        except ProtocolError as exc:
            self._error(exc.code, exc.message)
            return None

    def _peer(self) -> Peer:
        """This connection as the guard judges it: may a password cross it?"""
        config = self._config
        secure = (
            self._conn.secure
            or config.allow_insecure_auth
            or (config.loopback_is_secure and is_loopback(self._host))
        )
        return Peer(self._host, secure)

    async def _register(self, event: Register) -> None:
        """Register the current nick; ``notice{registered}`` or an error tells the client."""
        member = self._member
        assert member is not None
        if self._guard is None:
            self._error(ErrorCode.BAD_EVENT, "this server keeps no accounts")
            return
        try:
            self._identity = await self._guard.register(
                self._identity, member.nick, event.password, self._peer()
            )
        except ProtocolError as exc:
            self._error(exc.code, exc.message)
            return
        text = f"{member.nick} is registered: from now on, log in with its password"
        self._send(encode(Notice(code="registered", text=text)))

    def _accept(self, identity: Identity, rooms: list[str], resume_after: dict[str, int]) -> bool:
        """Attach, welcome and join ``rooms``; ``False`` (client told) if refused."""
        try:
            member = self._hub.attach(self, identity.nick)
        except ProtocolError as exc:
            self._error(exc.code, exc.message)
            return False
        self._member = member
        self._identity = identity
        # Again, now that the rooms on disk are loaded: one may be stored under a
        # look-alike of the name asked for, and two names asked for may be one room.
        resume_by_key = {rules.room_key(room): seq for room, seq in resume_after.items()}
        rooms = self._one_name_per_room(rooms)
        rooms = [room for room in rooms if self._allowed(room) and self._may_join(room)]
        rooms, refused = self._hub.admit(rooms)
        for room in refused:
            self._error(ErrorCode.TOO_MANY_ROOMS, f"the server holds its room limit: {room!r}")
        welcome = Welcome(
            nick=member.nick,
            rooms=rooms,
            limits=self._config.limits(),
            server_id=self._hub.server_id,
        )
        self._send(encode(welcome))
        self._started = trio.current_time()
        self._stats.sessions_started += 1
        log.info(
            "%s: session start: %s over %s",
            self._conn.remote,
            member.nick,
            self.transport,
            extra={
                "event": "session_start",
                "remote": self._conn.remote,
                "nick": member.nick,
                "transport": self.transport,
            },
        )
        for room in rooms:
            self._hub.join(member, room, resume_after=resume_by_key.get(rules.room_key(room)))
        return True

    def _one_name_per_room(self, rooms: list[str]) -> list[str]:
        """``rooms`` by the names the hub knows them by, each room once (the first of
        look-alikes asked for wins, when the room is new)."""
        unique: dict[str, str] = {}
        for room in rooms:
            name = self._hub.canonical(room)
            unique.setdefault(rules.room_key(name), name)
        return list(unique.values())

    def _valid_rooms(self, names: list[str]) -> dict[str, str]:
        """Each valid name mapped to its canonical form; invalid ones reported and skipped."""
        valid = {}
        for name in names:
            try:
                valid[name] = self._hub.canonical(name)
            except ProtocolError as exc:
                self._error(exc.code, exc.message)
        return valid

    def _handle(self, event: ClientEvent) -> None:
        member = self._member
        assert member is not None
        try:
            self._dispatch(member, event)
        except ProtocolError as exc:
            self._error(exc.code, exc.message, _ref(event))

    def _dispatch(self, member: Member, event: ClientEvent) -> None:
        hub = self._hub
        match event:
            case Say(room=room, text=text, id=ref, action=action):
                hub.say(member, room, self._check_text(text), ref, action=bool(action))
            case Dm(to=to, text=text, id=ref, action=action):
                hub.dm(member, to, self._check_text(text), ref, action=bool(action))
            case SetTopic(room=room, text=text):
                hub.set_topic(member, room, rules.check_topic(text, self._config.max_topic))
            case ListRooms(after=after, limit=limit):
                hub.list_rooms(member, after, limit)
            case Join(room=room) if not (self._allowed(room) and self._may_join(room)):
                pass  # refused, and the client told
            case Join(room=room):
                hub.join(member, room)
            case Part(room=room):
                hub.part(member, room)
            case Nick(nick=nick):  # the guard and the hub agreed first (_may_rename)
                hub.rename(member, nick)
            case Who(room=room):
                hub.who(member, room)
            case History(room=room, before_seq=before, limit=limit):
                hub.history(member, room, before, limit)
            case Ping(token=token):
                self._send(encode(Pong(token=token)))
            case Pong():
                pass
            case Quit():
                self.close(LeftReason.QUIT)
            case Hello():
                raise ProtocolError(ErrorCode.BAD_EVENT, "already said hello")

    def _allowed(self, room: str) -> bool:
        """Whether the client's token lets it into ``room`` (if not, it is told)."""
        if self._identity.may_join(rules.check_room(room)):
            return True
        self._error(ErrorCode.ROOM_FORBIDDEN, f"your token does not allow room {room!r}")
        return False

    def _may_join(self, room: str) -> bool:
        """Whether the address's join rate allows joining ``room`` (if not, the client is told).

        Every connection of an address shares its bucket, so reconnecting does
        not get round it; the connection's own event bucket applies as well.
        """
        if self._address is None or self._address.take_join():
            return True
        self._error(ErrorCode.RATE_LIMITED, f"slow down: too many joins from your address ({room})")
        return False

    def _check_text(self, text: str) -> str:
        return rules.check_text(text, self._config.max_text)

    def _error(self, code: ErrorCode, message: str, ref: Ref = None) -> None:
        self._send(encode(Error(code=code, message=message, ref=ref)))

    def _send(self, line: bytes) -> None:
        if self._member is not None:
            self._hub.answer(self._member, line)  # after the hub's answers still due
        elif not self._outbox.put(line):
            self.evict()


class _Failures:
    """Turns a peer's failure into the matching close, in the task that met it.

    A class, not a generator-based context manager: an idle session waits inside
    it, and a suspended generator would be one more frame held per connection.
    """

    __slots__ = ("_session",)

    def __init__(self, session: Session) -> None:
        self._session = session

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> bool:
        if isinstance(exc, ConnectionLost | WrongPort | ProtocolError):
            self._session._fail(exc)
            return True
        if isinstance(exc, StoreError):  # the server is stopping because of it
            self._session.close(LeftReason.SHUTDOWN, CloseCode.GOING_AWAY)
            return True
        return False


def _ref(event: ClientEvent) -> Ref:
    return event.id if isinstance(event, Say | Dm) else None
