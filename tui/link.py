"""The network side of the TUI: one Trio task tree that keeps a chat session alive.

Theory of operation
-------------------
:class:`Link` runs under Trio (as a guest of Textual's loop, see
:mod:`tui.guest`) and talks to the app only through Textual messages it posts
(:class:`Link.Status`, :class:`Link.Lines`, ...). The app talks back with
commands pushed into a bounded memory channel (:meth:`Link.submit`).

The connect loop owns the connection. Each round opens a client with every
room we are in and a ``resume`` point per room (:mod:`tui.sync`), runs three
tasks on it (events in, commands out, pings for the round-trip time) and, when
the connection breaks, waits a jittered, capped, exponentially growing delay
before the next round. A refused nick stops the loop until the person picks
another one on screen. Stopping (:meth:`Link.stop` or cancellation) leaves
nothing running: every task lives in :meth:`Link.run`'s nursery.

Resume points are seqs of the history named by the last ``welcome.server_id``.
They are sent in ``hello``, before the new ``welcome`` says which history this
connection reached; when its ``server_id`` differs, the replays already on
their way are stale, every watermark is forgotten and each room is refilled
with its recent past (:data:`tui.sync.Replay`).

Commands that arrive while disconnected are refused with a line on screen
rather than queued: a message typed into a dead connection should not appear
minutes later by surprise.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import trio
from textual.message import Message as TextualMessage

from triochat.client import AUTH_REFUSALS, Client, open_client
from triochat.errors import ConnectError, ConnectionClosed, ConnectionLost, Rejected
from triochat.protocol import rules
from triochat.protocol.events import (
    DirectMessage,
    Error,
    HistoryPage,
    Joined,
    Left,
    Members,
    Message,
    NickChanged,
    Notice,
    Pong,
    RoomEvent,
    RoomInfo,
    Rooms,
    ServerEvent,
    Topic,
    Welcome,
)
from tui import commands as cmd
from tui.sync import Outcome, Replay, RoomSync

Post = Callable[[TextualMessage], object]
COMMAND_BUFFER = 64
PING_INTERVAL = 5.0
OLDER_PAGE = 100
"""Events asked for per page of older history (the server may send fewer)."""


@dataclass(frozen=True)
class Backoff:
    """Delays between reconnect attempts: exponential, capped, with "equal jitter"."""

    base: float = 0.5
    cap: float = 15.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """A point in the upper half of ``min(cap, base * 2**attempt)``: never 0, never in step."""
        ceiling = min(self.cap, self.base * 2 ** min(attempt, 30))
        return rng.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True)
class Stop:
    reason: str | None = None


@dataclass(frozen=True)
class RetryNow:
    """Skip the rest of the reconnect delay (the person pressed Ctrl-R)."""


@dataclass(frozen=True)
class UseNick:
    """The nick picked on screen after the server refused the previous one, and its
    password if it is a registered nick."""

    nick: str
    password: str | None = None


@dataclass(frozen=True)
class Route:
    """A command with the view it was typed in (a room, or ``@nick`` for a DM view)."""

    command: cmd.Command
    view: str | None


@dataclass(frozen=True)
class Older:
    """The page of ``room``'s history just before ``before_seq`` (the person scrolled up)."""

    room: str
    before_seq: int


Request = Route | UseNick | RetryNow | Stop | Older


@dataclass
class _State:
    nick: str | None
    password: str | None = None
    """Sent with every hello (reconnects too) once given; forgotten when refused."""
    rooms: dict[str, RoomSync] = field(default_factory=dict)
    """Rooms we are in, in join order: what a reconnect asks for."""
    server_id: str | None = None
    """The ``welcome.server_id`` our watermarks refer to; None before the first welcome."""
    replays: dict[str, Replay] = field(default_factory=dict)
    """Rooms sent a resume point on this connection whose ``joined`` has not come yet."""
    older: set[str] = field(default_factory=set)
    """Rooms with a page of older history asked for on this connection."""


class Link:
    """A self-healing chat session. Create it in Trio or outside; run :meth:`run` in Trio."""

    # --- what the app hears ----------------------------------------------------

    class Status(TextualMessage):
        """``state`` is ``connecting``, ``connected``, ``waiting`` (to retry) or ``stopped``.

        When waiting, ``reason`` says why the last attempt ended and ``retry_in`` how long
        until the next.
        """

        def __init__(self, state: str, url: str, reason: str = "", retry_in: float = 0.0) -> None:
            super().__init__()
            self.state, self.url, self.reason, self.retry_in = state, url, reason, retry_in

    class Welcomed(TextualMessage):
        def __init__(self, nick: str, rooms: list[str], reconnect: bool) -> None:
            super().__init__()
            self.nick, self.rooms, self.reconnect = nick, rooms, reconnect

    class Lines(TextualMessage):
        """Room events to show in ``room``; ``live`` ones also update the member list."""

        def __init__(
            self, room: str, events: list[RoomEvent], *, live: bool, notes: list[str]
        ) -> None:
            super().__init__()
            self.room, self.events, self.live, self.notes = room, events, live, notes

    class OlderPage(TextualMessage):
        """A page of older history the app asked for (:class:`Older`), oldest first."""

        def __init__(self, room: str, events: list[RoomEvent]) -> None:
            super().__init__()
            self.room, self.events = room, events

    class RoomsListed(TextualMessage):
        """A page of the server's rooms (``list``); ``next`` is where the next page starts."""

        def __init__(self, rooms: list[RoomInfo], after: str | None, next: str | None) -> None:
            super().__init__()
            self.rooms, self.after, self.next = rooms, after, next

    class Direct(TextualMessage):
        def __init__(self, peer: str, event: DirectMessage) -> None:
            super().__init__()
            self.peer, self.event = peer, event

    class Roster(TextualMessage):
        """``members``: ``room`` None is the whole server (``/who *``)."""

        def __init__(
            self, room: str | None, nicks: list[str], asked: bool, topic: str | None = None
        ) -> None:
            super().__init__()
            self.room, self.nicks, self.asked, self.topic = room, nicks, asked, topic

    class Renamed(TextualMessage):
        def __init__(self, old: str, new: str, mine: bool) -> None:
            super().__init__()
            self.old, self.new, self.mine = old, new, mine

    class Parted(TextualMessage):
        def __init__(self, room: str) -> None:
            super().__init__()
            self.room = room

    class Problem(TextualMessage):
        """Something for the person to read: an ``error`` event, a command that failed."""

        def __init__(self, text: str, view: str | None = None) -> None:
            super().__init__()
            self.text, self.view = text, view

    class Info(TextualMessage):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    class NickNeeded(TextualMessage):
        """The server refused our nick (``nick_taken``/``nick_invalid``); ask for another."""

        def __init__(self, nick: str, reason: str) -> None:
            super().__init__()
            self.nick, self.reason = nick, reason

    class PasswordNeeded(TextualMessage):
        """The nick is registered (``auth_required``) or the password wrong (``auth_failed``)."""

        def __init__(self, nick: str, reason: str) -> None:
            super().__init__()
            self.nick, self.reason = nick, reason

    class RoundTrip(TextualMessage):
        def __init__(self, seconds: float) -> None:
            super().__init__()
            self.seconds = seconds

    # --- setup ------------------------------------------------------------------

    def __init__(
        self,
        url: str,
        nick: str,
        post: Post,
        *,
        rooms: list[str] | None = None,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        ping_interval: float = PING_INTERVAL,
        password: str | None = None,
        cafile: str | None = None,
    ) -> None:
        self.url = url
        self._cafile = cafile
        """A private CA that ``wss://`` and ``tls://`` servers' certificates are checked against."""
        self._post = post
        self._state = _State(nick=nick, password=password)
        self._wanted_rooms = list(rooms or [])
        self._backoff = backoff or Backoff()
        self._rng = rng or random.Random()
        self._ping_interval = ping_interval
        self._requests_in, self._requests = trio.open_memory_channel[Request](COMMAND_BUFFER)
        self._nicks_in, self._nicks = trio.open_memory_channel[UseNick](1)
        self._client: Client | None = None
        self._pings: dict[int, float] = {}
        self._ping_count = 0
        self._stopped = False
        self._welcomed_once = False
        self._retry_now = trio.Event()
        self._list_after: str | None = None
        """The ``after`` of the last ``list`` sent, to say what its answer continues."""

    @property
    def nick(self) -> str | None:
        return self._state.nick

    def submit(self, request: Request) -> None:
        """Hand a request to the Trio side; call it from inside Trio (e.g. via TrioToken)."""
        try:
            self._requests_in.send_nowait(request)
        except trio.WouldBlock:
            self._post(Link.Problem("too many commands at once; that one was dropped"))
        except trio.ClosedResourceError:
            pass

    # --- the task tree ------------------------------------------------------------

    async def run(self) -> None:
        """Until :class:`Stop` or cancellation. Owns every task and socket of the session."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._requests_loop, nursery.cancel_scope)
                await self._connect_loop()
        finally:
            self._client = None
            self._post(Link.Status("stopped", self.url))

    async def _connect_loop(self) -> None:
        attempt = 0
        while True:
            nick = self._state.nick or await self._chosen()
            self._state.nick = nick
            self._post(Link.Status("connecting", self.url))
            try:
                reason = await self._one_connection(nick)
                attempt = 0
            except Rejected as exc:
                self._refused(nick, exc)
                continue
            except (ConnectError, ConnectionLost) as exc:
                reason = str(exc)
            delay = self._backoff.delay(attempt, self._rng)
            attempt += 1
            self._post(Link.Status("waiting", self.url, reason, delay))
            await self._pause(delay)

    async def _chosen(self) -> str:
        """The nick (and password) the person picks on screen."""
        choice = await self._nicks.receive()
        self._state.password = choice.password
        return choice.nick

    def _refused(self, nick: str, exc: Rejected) -> None:
        """Ask the person: a password if one would do, else another nick."""
        self._state.nick = self._state.password = None
        if exc.code in AUTH_REFUSALS:
            self._post(Link.PasswordNeeded(nick, exc.message))
        else:
            self._post(Link.NickNeeded(nick, exc.message))

    async def _pause(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or less if the person asks to retry now."""
        self._retry_now = trio.Event()
        with trio.move_on_after(delay):
            await self._retry_now.wait()

    async def _one_connection(self, nick: str) -> str:
        """Connect, converse until the connection ends; why it ended (one line)."""
        state = self._state
        resume = {room: sync.resume_from() for room, sync in state.rooms.items()}
        resume_points = {room: seq for room, seq in resume.items() if seq is not None}
        rooms = list(state.rooms) or self._wanted_rooms or None
        async with open_client(
            self.url,
            nick,
            rooms=rooms,
            resume=resume_points or None,
            password=self._state.password,
            cafile=self._cafile,
        ) as client:
            state.replays = dict.fromkeys(resume_points, "resumed")
            for sync in state.rooms.values():
                sync.reset_connection()
            state.older.clear()
            self._client = client
            try:
                await self._converse(client)
            finally:
                self._client = None
                self._pings.clear()
        return "the server closed the connection"

    async def _converse(self, client: Client) -> None:
        assert client.welcome is not None
        self._welcomed(client.welcome)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._ping_loop, client)
            try:
                async for event in client:
                    await self._handle(client, event)
            except ConnectionLost:
                pass
            nursery.cancel_scope.cancel()

    def _welcomed(self, welcome: Welcome) -> None:
        self._check_history(welcome.server_id)
        self._state.nick = welcome.nick
        for room in welcome.rooms:
            self._state.rooms.setdefault(room, RoomSync())
        self._post(Link.Welcomed(welcome.nick, welcome.rooms, reconnect=self._welcomed_once))
        self._post(Link.Status("connected", self.url))
        self._welcomed_once = True

    def _check_history(self, server_id: str) -> None:
        """A different history: the resume points already sent name seqs it does not have."""
        state = self._state
        changed = state.server_id is not None and server_id != state.server_id
        state.server_id = server_id
        if changed:
            state.replays = dict.fromkeys(state.replays, "stale")
            for sync in state.rooms.values():
                sync.forget()

    async def _ping_loop(self, client: Client) -> None:
        while True:
            self._ping_count += 1
            self._pings = {self._ping_count: trio.current_time()}
            try:
                await client.ping(self._ping_count)
            except (ConnectionLost, ConnectionClosed):
                return
            await trio.sleep(self._ping_interval)

    # --- events in ------------------------------------------------------------------

    async def _handle(self, client: Client, event: ServerEvent) -> None:
        match event:
            case Joined() | Left() | Message() | Topic():
                await self._room_event(client, event)
            case HistoryPage(room=room, events=events):
                await self._page(client, room, events)
            case Members(room=room, nicks=nicks, topic=topic):
                await self._members(client, room, nicks, topic)
            case Rooms(rooms=rooms, next=after):
                self._post(Link.RoomsListed(rooms, self._list_after, after))
            case DirectMessage():
                peer = event.to if rules.nick_key(event.from_) == self._me() else event.from_
                self._post(Link.Direct(peer, event))
            case NickChanged(old=old, new=new):
                mine = rules.nick_key(old) == self._me()
                if mine:
                    self._state.nick = new
                self._post(Link.Renamed(old, new, mine))
            case Pong(token=token):
                self._pong(token)
            case Error(code=code, message=message):
                self._post(Link.Problem(f"{code}: {message}"))
            case Notice(text=text):
                self._post(Link.Info(text))
            case _:
                pass

    def _me(self) -> str:
        return rules.nick_key(self._state.nick or "")

    async def _page(self, client: Client, room: str, events: list[RoomEvent]) -> None:
        """A join's or a refill's page goes to the room's sync; else it is one we asked for."""
        sync = self._state.rooms.get(room)
        if sync is None:
            return
        if sync.expects_page:
            await self._apply(client, room, sync.history(events))
        elif room in self._state.older:
            self._state.older.discard(room)
            self._post(Link.OlderPage(room, events))

    async def _room_event(self, client: Client, event: RoomEvent) -> None:
        state = self._state
        own = rules.nick_key(event.from_ if isinstance(event, Message | Topic) else event.nick)
        if isinstance(event, Joined) and own == self._me():
            sync = state.rooms.setdefault(event.room, RoomSync())
            sync.own_joined(event, replay=state.replays.pop(event.room, "fresh"))
            return
        sync_or_none = state.rooms.get(event.room)
        if sync_or_none is None:
            return
        await self._apply(client, event.room, sync_or_none.live(event))
        if isinstance(event, Left) and own == self._me():
            del state.rooms[event.room]
            self._post(Link.Parted(event.room))

    async def _members(
        self, client: Client, room: str | None, nicks: list[str], topic: str | None
    ) -> None:
        sync = self._state.rooms.get(room) if room is not None else None
        if sync is None or not sync.joining:
            self._post(Link.Roster(room, nicks, asked=True, topic=topic))
            return
        outcome = sync.members()
        self._post(Link.Roster(room, nicks, asked=False, topic=topic))
        await self._apply(client, room or "", outcome)

    async def _apply(self, client: Client, room: str, outcome: Outcome) -> None:
        if outcome.show or outcome.notes:
            self._post(Link.Lines(room, outcome.show, live=outcome.live, notes=outcome.notes))
        if outcome.joined is not None:
            self._post(Link.Lines(room, [outcome.joined], live=False, notes=[]))
        if outcome.released:
            self._post(Link.Lines(room, outcome.released, live=True, notes=[]))
        if outcome.fetch_before is not None:
            # No limit: the server's default page, the recent past a fresh join gets.
            await client.history(room, before_seq=outcome.fetch_before)

    def _pong(self, token: object) -> None:
        if isinstance(token, int) and token in self._pings:
            self._post(Link.RoundTrip(trio.current_time() - self._pings.pop(token)))

    # --- requests out -------------------------------------------------------------------

    async def _requests_loop(self, scope: trio.CancelScope) -> None:
        async for request in self._requests:
            match request:
                case Stop(reason=reason):
                    await self._goodbye(reason)
                    scope.cancel()
                    return
                case RetryNow():
                    self._retry_now.set()
                case UseNick():
                    with contextlib.suppress(trio.WouldBlock):
                        self._nicks_in.send_nowait(request)
                case Route(command=command, view=view):
                    await self._send(command, view)
                case Older(room=room, before_seq=before_seq):
                    await self._older(room, before_seq)

    async def _goodbye(self, reason: str | None) -> None:
        client = self._client
        if client is None:
            return
        with trio.move_on_after(1.0):
            try:
                await client.quit(reason)
                async for _ in client:  # the server ends the session once it has the quit
                    pass
            except (ConnectionLost, ConnectionClosed):
                pass

    async def _older(self, room: str, before_seq: int) -> None:
        client = self._client
        if client is None:
            self._post(Link.Problem("not connected: older history cannot be fetched now", room))
            return
        if room not in self._state.rooms:
            return  # parted meanwhile: its view is gone
        self._state.older.add(room)
        try:
            await client.history(room, before_seq=before_seq, limit=OLDER_PAGE)
        except (ConnectionLost, ConnectionClosed):
            self._state.older.discard(room)

    async def _send(self, command: cmd.Command, view: str | None) -> None:
        client = self._client
        if client is None:
            self._post(Link.Problem("not connected: not sent", view))
            return
        try:
            await self._send_on(client, command, view)
        except (ConnectionLost, ConnectionClosed):
            self._post(Link.Problem("the connection dropped: not sent", view))

    async def _send_on(self, client: Client, command: cmd.Command, view: str | None) -> None:
        match command:
            case cmd.Say(text=text, action=action) if view is not None and view.startswith("@"):
                await client.dm(view[1:], text, action=action)
            case cmd.Say(text=text, action=action) if view is not None:
                await client.say(view, text, action=action)
            case cmd.Say():
                self._post(Link.Problem("join a room first: /join ROOM"))
            case cmd.Msg(to=to, text=text):
                await client.dm(to, text)
            case cmd.Join(room=room):
                await client.join(room)
            case cmd.Part(room=room):
                target = room or view
                if target is None or target.startswith("@"):
                    self._post(Link.Problem("which room? /part ROOM"))
                else:
                    await client.part(target)
            case cmd.NickTo(nick=nick):
                await client.nick(nick)
            case cmd.Who(room=room, everyone=everyone):
                await client.who(None if everyone else room or _room_of(view))
            case cmd.Topic(text=text) if text is not None:
                target = _room_of(view)
                if target is None:
                    self._post(Link.Problem("topics are for rooms: /join ROOM first"))
                else:
                    await client.topic(target, text)
            case cmd.ListRooms(after=after):
                self._list_after = after
                await client.list_rooms(after)
            case _:
                pass


def _room_of(view: str | None) -> str | None:
    return None if view is None or view.startswith("@") else view
