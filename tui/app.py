"""The chat app: the screen, the views (rooms and DMs) and what the person types.

The app never touches the network. Its Trio half, a :class:`tui.link.Link`, runs
as a guest on the app's asyncio loop (:mod:`tui.guest`) and reports through
``Link.*`` messages handled by the ``on_link_*`` methods below; what the person
types goes back as requests via :meth:`ChatApp.request`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from dataclasses import dataclass, field

from rich.text import Text
from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Input

from triochat.protocol import rules
from triochat.protocol.events import Joined, Left, Message, RoomEvent
from tui import commands as cmd
from tui.commands import COMMANDS, HELP_KEYS
from tui.guest import TrioGuest
from tui.link import PING_INTERVAL, Backoff, Link, Request, RetryNow, Route, Stop, UseNick
from tui.render import Renderer, TimeFormat, clock
from tui.widgets import (
    ChatInput,
    MemberList,
    MessageLog,
    NickScreen,
    PasswordScreen,
    RoomList,
    StatusBar,
)

VIEW_LINES = 2000
"""Lines kept per view; older ones scroll away for good."""
GOODBYE_TIMEOUT = 2.0


@dataclass
class View:
    """A room (``name``) or a DM conversation (``@nick``)."""

    name: str
    lines: deque[Text] = field(default_factory=lambda: deque(maxlen=VIEW_LINES))
    unread: int = 0
    members: list[str] = field(default_factory=list)

    @property
    def is_dm(self) -> bool:
        return self.name.startswith("@")


class ChatApp(App[int]):
    CSS_PATH = "chat.tcss"
    TITLE = "triochat"
    ENABLE_COMMAND_PALETTE = False
    AUTO_FOCUS = "#input"
    BINDINGS = [  # noqa: RUF012 (Textual's convention)
        Binding("ctrl+q", "quit", "quit", priority=True),
        Binding("ctrl+c", "quit", "quit", priority=True, show=False),
        Binding("ctrl+n", "cycle(1)", "next room", priority=True),
        Binding("ctrl+p", "cycle(-1)", "previous room", priority=True),
        Binding("ctrl+r", "retry", "reconnect now", priority=True),
    ]

    def __init__(
        self,
        url: str,
        nick: str | None = None,
        room: str | None = None,
        *,
        timefmt: TimeFormat = clock,
        backoff: Backoff | None = None,
        ping_interval: float = PING_INTERVAL,
        show_rtt: bool = True,
        address_label: str | None = None,
        rng: random.Random | None = None,
        password: str | None = None,
        cafile: str | None = None,
    ) -> None:
        super().__init__()
        self.url = url
        self._cafile = cafile
        self.me = nick
        self._password = password
        """The first hello's password (``--password-env``); later ones are asked for."""
        self._room = room
        self._render = Renderer(timefmt)
        self._backoff = backoff
        self._ping_interval = ping_interval
        self._show_rtt = show_rtt
        self._address = address_label or url
        self._rng = rng
        self.views: dict[str, View] = {}
        self.current: str | None = None
        self.guest = TrioGuest()
        self.link: Link | None = None
        self._state = ("connecting", "")
        self._rtt = ""
        self._quitting = False
        self._switch_on_join: str | None = None
        self._last_reason = ""

    @property
    def connection(self) -> str:
        """``connecting``, ``connected``, ``waiting`` (to retry) or ``stopped``."""
        return self._state[0]

    # --- layout -------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            yield RoomList(id="rooms")
            with Vertical(id="centre"):
                yield MessageLog(id="log", wrap=True, markup=False, highlight=False, min_width=20)
                yield ChatInput(self._completion_nicks, id="input", placeholder="say something…")
            yield MemberList(id="members")
        yield StatusBar(id="status")

    def on_mount(self) -> None:
        self.query_one(RoomList).border_title = "rooms"
        self.query_one(MemberList).border_title = "members"
        self._refresh_status()
        if self.me:
            self._start(self.me)
        else:
            self.push_screen(NickScreen(), self._nick_chosen)

    async def on_unmount(self) -> None:
        await self._stop_network(None)

    # --- the Trio side ----------------------------------------------------------------

    def _start(self, nick: str) -> None:
        self.link = Link(
            self.url,
            nick,
            self.post_message,
            rooms=[self._room] if self._room else None,
            backoff=self._backoff,
            ping_interval=self._ping_interval,
            rng=self._rng,
            password=self._password,
            cafile=self._cafile,
        )
        self.guest.start(self.link.run)
        self.run_worker(self._watch_network(), name="network", group="network")

    async def _watch_network(self) -> None:
        """If the Trio side ends by itself (a crash, a SIGINT), the app ends with it."""
        await self.guest.wait()
        if not self._quitting:
            self.exit(1)

    def request(self, request: Request) -> None:
        """Hand ``request`` to the Trio side."""
        if self.link is None or not self.guest.call_soon(self.link.submit, request):
            self._problem("not connected yet")

    def _nick_chosen(self, nick: str | None, password: str | None = None) -> None:
        if not nick:
            return
        if self.link is None:
            self._password = password
            self._start(nick)
        else:
            self.request(UseNick(nick, password))
        self.query_one(ChatInput).focus()

    async def action_quit(self, reason: str | None = None) -> None:
        """Say goodbye (bounded), stop the Trio side, then leave."""
        if self._quitting:
            return
        self._quitting = True
        await self._stop_network(reason)
        self.exit(0)

    async def _stop_network(self, reason: str | None) -> None:
        """Quit politely (bounded by GOODBYE_TIMEOUT), then make sure Trio has stopped."""
        self._quitting = True
        if self.link is not None and self.guest.running:
            self.guest.call_soon(self.link.submit, Stop(reason))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.guest.wait(), GOODBYE_TIMEOUT)
        await self.guest.aclose()

    # --- what the Trio side says --------------------------------------------------------

    def on_link_status(self, event: Link.Status) -> None:
        detail = f"retry in {event.retry_in:.0f} s (Ctrl-R: now)" if event.retry_in else ""
        self._state = (event.state, detail)
        if event.state == "connected":
            self._last_reason = ""
        elif event.state == "waiting" and event.reason != self._last_reason:
            self._last_reason = event.reason  # one line per new reason, not per attempt
            self._problem(event.reason, everywhere=True)
        if event.state != "connected":
            self._rtt = ""
        self._refresh_status()

    def on_link_welcomed(self, event: Link.Welcomed) -> None:
        self.me = event.nick
        for room in event.rooms:
            self._view(room)
        if event.reconnect:
            for room in event.rooms:
                self._note(room, "reconnected")
        if self.current is None and event.rooms:
            self.switch_to(self._room if self._room in event.rooms else event.rooms[0])
        self._refresh_rooms()
        self._refresh_status()

    def on_link_lines(self, event: Link.Lines) -> None:
        view = self._view(event.room)
        for note in event.notes:
            self._note(event.room, note)
        me = self.me or ""
        for item in event.events:
            self._add(view, self._render.room_event(item, me), counts=isinstance(item, Message))
            if event.live:
                self._track_member(view, item)
        if event.live and view.name == self.current:
            self._refresh_members()
        self._refresh_rooms()

    def on_link_direct(self, event: Link.Direct) -> None:
        view = self._view(f"@{event.peer}")
        self._add(view, self._render.dm(event.event, self.me or ""), counts=True)
        self._refresh_rooms()

    def on_link_roster(self, event: Link.Roster) -> None:
        if event.room is None:
            self._info(f"online: {', '.join(event.nicks)}")
            return
        if event.room in self.views or not event.asked:  # not asked: the end of our join
            self._view(event.room).members = list(event.nicks)
        if event.room == self._switch_on_join:
            self._switch_on_join = None
            self.switch_to(event.room)
        if event.asked:
            self._info(f"in #{event.room}: {', '.join(event.nicks) or 'nobody'}")
        if event.room == self.current:
            self._refresh_members()

    def on_link_renamed(self, event: Link.Renamed) -> None:
        if event.mine:
            self.me = event.new
        text = f"{event.old} is now known as {event.new}"
        for view in self.views.values():
            if event.old in view.members:
                view.members[view.members.index(event.old)] = event.new
                self._note(view.name, text)
            elif event.mine and not view.is_dm:
                self._note(view.name, text)
        self._refresh_members()
        self._refresh_status()

    def on_link_parted(self, event: Link.Parted) -> None:
        self.views.pop(event.room, None)
        if self.current == event.room:
            self.current = None
            if self.views:
                self.switch_to(next(iter(self.views)))
            else:
                self.query_one(MessageLog).show([])
                self._refresh_members()
        self._refresh_rooms()

    def on_link_problem(self, event: Link.Problem) -> None:
        self._problem(event.text, view=event.view)

    def on_link_info(self, event: Link.Info) -> None:
        self._info(event.text)

    def on_link_nick_needed(self, event: Link.NickNeeded) -> None:
        self.me = None
        self._refresh_status()
        self.push_screen(
            NickScreen(reason=f"{event.nick}: {event.reason}", suggestion=event.nick),
            self._nick_chosen,
        )

    def on_link_password_needed(self, event: Link.PasswordNeeded) -> None:
        self.me = None
        self._refresh_status()

        def chosen(password: str | None) -> None:
            if password is None:  # Escape: another nick instead
                self.push_screen(NickScreen(suggestion=event.nick), self._nick_chosen)
            else:
                self._nick_chosen(event.nick, password)

        self.push_screen(PasswordScreen(event.nick, f"{event.nick}: {event.reason}"), chosen)

    def on_link_round_trip(self, event: Link.RoundTrip) -> None:
        self._rtt = f"{event.seconds * 1000:.0f} ms"
        self._refresh_status()

    # --- what the person does ---------------------------------------------------------

    @on(Input.Submitted, "#input")
    def _typed(self, event: Input.Submitted) -> None:
        line = event.value
        box = self.query_one(ChatInput)
        box.remember(line)
        box.value = ""
        command = cmd.parse(line)
        if command is not None:
            self.run_command(command)

    def run_command(self, command: cmd.Command) -> None:
        match command:
            case cmd.Help():
                for text in [*COMMANDS.values(), HELP_KEYS]:
                    self._info(text)
            case cmd.Invalid(why=why):
                self._problem(why)
            case cmd.Reconnect():
                self.action_retry()
            case cmd.QuitChat(reason=reason):
                self.run_worker(self.action_quit(reason), group="quit")
            case cmd.Msg(to=to):
                self.switch_to(self._view(f"@{to}").name)
                self.request(Route(command, self.current))
            case cmd.Join(room=room) if room.lower() in self.views:
                self.switch_to(room.lower())
            case cmd.Join(room=room):
                self._switch_on_join = room.lower()
                self.request(Route(command, self.current))
            case _:
                self.request(Route(command, self.current))

    def action_retry(self) -> None:
        if self._state[0] == "connected":
            self._info("already connected")
        else:
            self.request(RetryNow())

    def on_room_list_picked(self, event: RoomList.Picked) -> None:
        self.switch_to(event.view)

    def action_cycle(self, step: int) -> None:
        names = list(self.views)
        if names:
            index = names.index(self.current) if self.current in names else 0
            self.switch_to(names[(index + step) % len(names)])

    def switch_to(self, name: str) -> None:
        view = self._view(name)
        self.current = name
        view.unread = 0
        self.query_one(MessageLog).show(list(view.lines))
        self.query_one(MessageLog).border_title = name if view.is_dm else f"#{name}"
        self._refresh_members()
        self._refresh_rooms()

    # --- views ------------------------------------------------------------------------

    def _view(self, name: str) -> View:
        view = self.views.get(name)
        if view is None:
            view = self.views[name] = View(name)
            self._refresh_rooms()
        return view

    def _add(self, view: View, line: Text, *, counts: bool = False) -> None:
        view.lines.append(line)
        if view.name == self.current:
            self.query_one(MessageLog).write(line)
        elif counts:
            view.unread += 1

    def _track_member(self, view: View, event: RoomEvent) -> None:
        if isinstance(event, Joined) and event.nick not in view.members:
            view.members.append(event.nick)
        elif isinstance(event, Left) and event.nick in view.members:
            view.members.remove(event.nick)

    def _note(self, room: str, text: str) -> None:
        self._add(self._view(room), self._render.notice(time.time(), text))

    def _info(self, text: str) -> None:
        self._to_current(self._render.info(text))

    def _problem(self, text: str, *, view: str | None = None, everywhere: bool = False) -> None:
        line = self._render.problem(text)
        if everywhere and self.views:
            for each in self.views.values():
                self._add(each, line)
        elif view is not None and view in self.views:
            self._add(self.views[view], line)
        else:
            self._to_current(line)

    def _to_current(self, line: Text) -> None:
        if self.current is not None:
            self._add(self.views[self.current], line)
        else:
            self.query_one(MessageLog).write(line)

    def _completion_nicks(self) -> list[str]:
        view = self.views.get(self.current or "")
        nicks = set(view.members if view else [])
        for other in self.views.values():
            nicks.update(other.members)
            if other.is_dm:
                nicks.add(other.name[1:])
        me = rules.nick_key(self.me or "")
        return [n for n in nicks if rules.nick_key(n) != me]

    # --- refreshing widgets --------------------------------------------------------------

    def _refresh_rooms(self) -> None:
        views = [(v.name, v.unread) for v in self.views.values()]
        self.query_one(RoomList).show(views, self.current)

    def _refresh_members(self) -> None:
        view = self.views.get(self.current or "")
        self.query_one(MemberList).show(view.members if view else [], self.me)

    def _refresh_status(self) -> None:
        state, detail = self._state
        rtt = self._rtt if self._show_rtt else ""
        # query, not query_one: a round trip measured while the app exits finds no bar.
        for bar in self.query(StatusBar):
            bar.show(state, self._address, self.me, rtt, detail)
