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
from dataclasses import dataclass, field
from pathlib import Path

from rich.text import Text
from textual import events, on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Input

from triochat.protocol import rules
from triochat.protocol.events import Joined, Left, Message, RoomEvent, Topic
from tui import commands as cmd
from tui.commands import COMMANDS, HELP_KEYS
from tui.config import Memory
from tui.guest import TrioGuest
from tui.link import PING_INTERVAL, Backoff, Link, Older, Request, RetryNow, Route, Stop, UseNick
from tui.log import ChatLog
from tui.render import Entry, Mentions, Renderer, TimeFormat, clock, literal
from tui.widgets import (
    ChatInput,
    MemberList,
    NickScreen,
    PasswordScreen,
    RoomBar,
    RoomList,
    StatusBar,
    Tab,
)

VIEW_LINES = 2000
"""Entries a view keeps while it follows; older ones scroll away (history can bring them back)."""
TRIM_SLACK = 200
"""Trimmed in batches, so a busy room does not relayout the log on every message."""
GOODBYE_TIMEOUT = 2.0
WIDE_MEMBERS = 80
"""At this width and below, the member list hides unless asked for (F3)."""
WIDE_ROOMS = 60
"""At this width and below, the room list folds into a one-line bar unless asked for (F2)."""
NEW_SINCE = "new since you looked"
WELCOME = "Welcome to triochat. /help or F1 lists every command and key."


@dataclass
class View:
    """A room (``name``) or a DM conversation (``@nick``)."""

    name: str
    lines: list[Entry] = field(default_factory=list)
    unread: int = 0
    attention: int = 0
    """Unread mentions, or unread direct messages."""
    members: list[str] = field(default_factory=list)
    topic: str = ""
    seen: Entry | None = None
    """The last entry when the person left this view: newer ones are new to them."""
    loading: bool = False
    """Older history has been asked for and has not come yet."""
    at_start: bool = False
    """The server has nothing older than the oldest entry."""

    @property
    def is_dm(self) -> bool:
        return self.name.startswith("@")

    @property
    def oldest_seq(self) -> int | None:
        return next((e.seq for e in self.lines if e.seq is not None), None)

    @property
    def title(self) -> str:
        name = self.name if self.is_dm else f"#{self.name}"
        return f"{name} — {self.topic}" if self.topic else name


class ChatApp(App[int]):
    CSS_PATH = Path(__file__).with_name("chat.tcss")  # absolute: subclasses live elsewhere
    TITLE = "triochat"
    ENABLE_COMMAND_PALETTE = False
    AUTO_FOCUS = "#input"
    BINDINGS = [  # noqa: RUF012 (Textual's convention)
        Binding("ctrl+q", "quit", "quit", priority=True),
        Binding("ctrl+c", "quit", "quit", priority=True, show=False),
        Binding("ctrl+n", "cycle(1)", "next room", priority=True),
        Binding("ctrl+p", "cycle(-1)", "previous room", priority=True),
        Binding("ctrl+r", "retry", "reconnect now", priority=True),
        Binding("pageup,shift+pageup", "page(-1)", "scroll up", priority=True, show=False),
        Binding("pagedown,shift+pagedown", "page(1)", "scroll down", priority=True, show=False),
        Binding("ctrl+home", "jump(False)", "oldest", priority=True, show=False),
        Binding("ctrl+end", "jump(True)", "newest", priority=True, show=False),
        Binding("f1", "help", "help", priority=True),
        Binding("f2", "panel('rooms')", "rooms", priority=True),
        Binding("f3", "panel('members')", "members", priority=True),
    ]

    def __init__(
        self,
        url: str,
        nick: str | None = None,
        room: str | None = None,
        *,
        rooms: list[str] | None = None,
        timefmt: TimeFormat = clock,
        backoff: Backoff | None = None,
        ping_interval: float = PING_INTERVAL,
        show_rtt: bool = True,
        address_label: str | None = None,
        rng: random.Random | None = None,
        password: str | None = None,
        cafile: str | None = None,
        highlight: list[str] | None = None,
        bell: bool = True,
        memory: Memory | None = None,
    ) -> None:
        super().__init__()
        self.url = url
        self._cafile = cafile
        self.me = nick
        self._password = password
        """The first hello's password (``--password-env``); later ones are asked for."""
        self._rooms = [r.lower() for r in (rooms or ([room] if room else []))]
        self._mentions = Mentions(highlight or [])
        self._render = Renderer(timefmt, self._mentions)
        self._bell = bell
        self._memory = memory
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
        self.panels: dict[str, bool | None] = {"rooms": None, "members": None}
        """Shown (True) or hidden (False) by the person; None: as the width suggests."""
        self.known_rooms: set[str] = set()
        """Room names seen in /list answers, for completion."""

    @property
    def connection(self) -> str:
        """``connecting``, ``connected``, ``waiting`` (to retry) or ``stopped``."""
        return self._state[0]

    # --- layout -------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            yield RoomList(id="rooms")
            with Vertical(id="centre"):
                yield RoomBar(id="roombar")
                yield ChatLog(id="log")
                yield ChatInput(
                    self._completion_nicks,
                    self._completion_rooms,
                    id="input",
                    placeholder="say something…  (/help or F1: commands and keys)",
                )
            yield MemberList(id="members")
        yield StatusBar(id="status")

    def on_mount(self) -> None:
        self.query_one(RoomList).border_title = "rooms"
        self.query_one(MemberList).border_title = "members"
        self.query_one(ChatLog).append(self._render.info(WELCOME))
        self._refresh_status()
        self._lay_out()
        if self.me:
            self._start(self.me)
        else:
            self.push_screen(NickScreen(), self._nick_chosen)

    def on_resize(self, event: events.Resize) -> None:
        self._lay_out()

    def action_panel(self, panel: str) -> None:
        self.panels[panel] = not self._shows(panel)
        self._lay_out()

    def _shows(self, panel: str) -> bool:
        chosen = self.panels[panel]
        if chosen is not None:
            return chosen
        return self.size.width > (WIDE_ROOMS if panel == "rooms" else WIDE_MEMBERS)

    def _lay_out(self) -> None:
        rooms = self._shows("rooms")
        self.query_one(RoomList).display = rooms
        self.query_one(RoomBar).display = not rooms
        self.query_one(MemberList).display = self._shows("members")

    async def on_unmount(self) -> None:
        await self._stop_network(None)

    # --- the Trio side ----------------------------------------------------------------

    def _start(self, nick: str) -> None:
        self.link = Link(
            self.url,
            nick,
            self.post_message,
            rooms=self._rooms or None,
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
        self._mentions.nick(event.nick)
        for view in self.views.values():
            view.loading = False  # a page asked for on the last connection will not come
        for room in event.rooms:
            self._view(room)
        if event.reconnect:
            for room in event.rooms:
                self._note(room, "reconnected")
        if self.current is None and event.rooms:
            wanted = self._rooms[0] if self._rooms else None
            self.switch_to(wanted if wanted in event.rooms else event.rooms[0])
        if not event.reconnect:
            self._info(WELCOME)
        self._remember()
        self._refresh_rooms()
        self._refresh_status()

    def on_link_lines(self, event: Link.Lines) -> None:
        view = self._view(event.room)
        for note in event.notes:
            self._note(event.room, note)
        me = self.me or ""
        for item in event.events:
            entry = self._render.room_event(item, me)
            self._add(view, entry, counts=isinstance(item, Message), live=event.live)
            if event.live:
                self._track_member(view, item)
            if isinstance(item, Topic):
                view.topic = item.text
        if event.live and view.name == self.current:
            self._refresh_members()
        self._refresh_title()
        self._refresh_rooms()

    def on_link_older_page(self, event: Link.OlderPage) -> None:
        view = self.views.get(event.room)
        if view is None:
            return
        view.loading = False
        oldest = view.oldest_seq
        me = self.me or ""
        older = [e for e in event.events if oldest is None or e.seq < oldest]
        entries = [self._render.room_event(e, me) for e in older]
        if not entries:
            view.at_start = True
            entries = [self._render.notice(None, "the start of what the server keeps")]
        view.lines[:0] = entries
        if view.name == self.current:
            self.query_one(ChatLog).prepend(entries)

    def on_link_direct(self, event: Link.Direct) -> None:
        view = self._view(f"@{event.peer}")
        self._add(view, self._render.dm(event.event, self.me or ""), counts=True, live=True)
        self._refresh_rooms()

    def on_link_roster(self, event: Link.Roster) -> None:
        if event.room is None:
            self._info(f"online: {', '.join(event.nicks)}")
            return
        if event.room in self.views or not event.asked:  # not asked: the end of our join
            view = self._view(event.room)
            view.members = list(event.nicks)
            view.topic = event.topic or ""
        if event.room == self._switch_on_join:
            self._switch_on_join = None
            self.switch_to(event.room)
        if event.asked:
            self._info(f"in #{event.room}: {', '.join(event.nicks) or 'nobody'}")
        else:
            self._remember()
        if event.room == self.current:
            self._refresh_members()
            self._refresh_title()

    def on_link_rooms_listed(self, event: Link.RoomsListed) -> None:
        if not event.rooms:
            self._info("no rooms with people in them" + (" after that" if event.after else ""))
        for room in event.rooms:
            self.known_rooms.add(room.room)
            topic = f" — {room.topic}" if room.topic else ""
            people = f"{room.members} member" + ("s" if room.members != 1 else "")
            self._info(f"#{room.room}  {people}{topic}")
        if event.next is not None:
            self._info(f"more: /list {event.next}")

    def on_link_renamed(self, event: Link.Renamed) -> None:
        if event.mine:
            self.me = event.new
            self._mentions.nick(event.new)
        self._follow_dm(event.old, event.new)
        text = f"{event.old} is now known as {event.new}"
        for view in self.views.values():
            if event.old in view.members:
                view.members[view.members.index(event.old)] = event.new
                self._note(view.name, text)
            elif (event.mine and not view.is_dm) or view.name == f"@{event.new}":
                self._note(view.name, text)
        self._remember()
        self._refresh_members()
        self._refresh_status()
        self._refresh_rooms()

    def _follow_dm(self, old: str, new: str) -> None:
        """The DM view with ``old`` becomes the one with ``new``, in the same place."""
        before, after = f"@{old}", f"@{new}"
        if before not in self.views or after in self.views:
            return
        self.views = {(after if k == before else k): v for k, v in self.views.items()}
        self.views[after].name = after
        if self.current == before:
            self.current = after
            self._refresh_title()

    def on_link_parted(self, event: Link.Parted) -> None:
        self.views.pop(event.room, None)
        if self.current == event.room:
            self.current = None
            if self.views:
                self.switch_to(next(iter(self.views)))
            else:
                self.query_one(ChatLog).show([])
                self._refresh_members()
        self._remember()
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

    def on_key(self, event: events.Key) -> None:
        """Typing with the focus elsewhere (the room list) goes to the input line."""
        box = self.query_one(ChatInput)
        if event.is_printable and event.character and self.focused is not box:
            if isinstance(self.screen.focused, Input):
                return  # another screen's input (the nick prompt)
            event.stop()
            box.focus()
            box.insert_text_at_cursor(event.character)

    def run_command(self, command: cmd.Command) -> None:
        match command:
            case cmd.Help():
                self.action_help()
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
            case cmd.Topic(text=None):
                self._show_topic()
            case _:
                self.request(Route(command, self.current))

    def action_help(self) -> None:
        for text in [*COMMANDS.values(), *HELP_KEYS]:
            self._info(text)

    def _show_topic(self) -> None:
        view = self.views.get(self.current or "")
        if view is None or view.is_dm:
            self._problem("topics are for rooms: /join ROOM first")
        else:
            self._info(f"topic of #{view.name}: {view.topic}" if view.topic else "no topic set")

    def action_retry(self) -> None:
        if self._state[0] == "connected":
            self._info("already connected")
        else:
            self.request(RetryNow())

    def action_page(self, step: int) -> None:
        log = self.query_one(ChatLog)
        if log.following:  # the scroll to the newest line may still be pending this frame
            log.scroll_to(y=log.max_scroll_y, animate=False, immediate=True)
        if step < 0 and log.scroll_y <= 0:
            self.on_chat_log_at_top()
        elif step < 0:
            log.scroll_page_up(animate=False)
        else:
            log.scroll_page_down(animate=False)

    def action_jump(self, end: bool) -> None:
        self.query_one(ChatLog).jump(end=end)

    def on_chat_log_at_top(self, event: ChatLog.AtTop | None = None) -> None:
        """Fetch the page of history before the oldest entry of the view, once at a time."""
        view = self.views.get(self.current or "")
        if view is None or view.is_dm or view.loading or view.at_start:
            return
        oldest = view.oldest_seq
        if oldest is None or oldest <= 1:
            view.at_start = oldest is not None
            return
        view.loading = True
        self.request(Older(view.name, oldest))

    def on_room_list_picked(self, event: RoomList.Picked) -> None:
        self.switch_to(event.view)

    def action_cycle(self, step: int) -> None:
        names = list(self.views)
        if names:
            index = names.index(self.current) if self.current in names else 0
            self.switch_to(names[(index + step) % len(names)])

    def switch_to(self, name: str) -> None:
        leaving = self.views.get(self.current or "")
        if leaving is not None and leaving.name != name:
            leaving.seen = leaving.lines[-1] if leaving.lines else None
        view = self._view(name)
        self.current = name
        view.unread = view.attention = 0
        self.query_one(ChatLog).show(self._with_separator(view))
        self._refresh_title()
        self._refresh_members()
        self._refresh_rooms()

    def _with_separator(self, view: View) -> list[Entry]:
        """The view's entries, with a rule after the last one the person had seen."""
        lines = view.lines
        if view.seen is None or not lines or lines[-1] is view.seen:
            return list(lines)
        for index in range(len(lines) - 1, -1, -1):
            if lines[index] is view.seen:
                rule = self._render.separator(NEW_SINCE)
                return [*lines[: index + 1], rule, *lines[index + 1 :]]
        return list(lines)

    # --- views ------------------------------------------------------------------------

    def _view(self, name: str) -> View:
        view = self.views.get(name)
        if view is None:
            view = self.views[name] = View(name)
            self._refresh_rooms()
        return view

    def _add(self, view: View, entry: Entry, *, counts: bool = False, live: bool = False) -> None:
        view.lines.append(entry)
        log = self.query_one(ChatLog)
        visible = view.name == self.current
        if visible:
            log.append(entry, counts=counts)
        elif counts:
            view.unread += 1
        if live and entry.attention:
            self._attend(view, seen=visible and log.following and self.app_focus)
        if len(view.lines) > VIEW_LINES + TRIM_SLACK and (not visible or log.following):
            self._trim(view, log if visible else None)

    def _attend(self, view: View, *, seen: bool) -> None:
        """A mention or a DM arrived in ``view``; ``seen`` if it is on screen as it comes."""
        if view.name != self.current:
            view.attention += 1
        if self._bell and not seen:
            self.bell()

    def _trim(self, view: View, log: ChatLog | None) -> None:
        """Drop the oldest entries past the bound (scrolling up fetches them again)."""
        del view.lines[: len(view.lines) - VIEW_LINES]
        view.at_start = False
        if log is not None:
            log.show(self._with_separator(view))

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

    def _to_current(self, line: Entry) -> None:
        if self.current is not None:
            self._add(self.views[self.current], line)
        else:
            self.query_one(ChatLog).append(line)

    def _completion_nicks(self) -> list[str]:
        view = self.views.get(self.current or "")
        nicks = set(view.members if view else [])
        for other in self.views.values():
            nicks.update(other.members)
            if other.is_dm:
                nicks.add(other.name[1:])
        me = rules.nick_key(self.me or "")
        return [n for n in nicks if rules.nick_key(n) != me]

    def _completion_rooms(self) -> list[str]:
        return sorted(self.known_rooms | {name for name in self.views if not name.startswith("@")})

    def _remember(self) -> None:
        if self._memory is None:
            return
        rooms = [name for name in self.views if not name.startswith("@")]
        problem = self._memory.remember(url=self.url, nick=self.me, rooms=rooms)
        if problem:
            self._memory = None  # said once; the chat goes on without it
            self._problem(problem)

    # --- refreshing widgets --------------------------------------------------------------

    def _refresh_rooms(self) -> None:
        tabs = [Tab(v.name, v.unread, v.attention) for v in self.views.values()]
        self.query_one(RoomList).show(tabs, self.current)
        self.query_one(RoomBar).show(tabs, self.current)

    def _refresh_title(self) -> None:
        view = self.views.get(self.current or "")
        # A Text, not a str: Textual reads a str title as markup, and topics are anyone's.
        self.query_one(ChatLog).border_title = Text(literal(view.title)) if view else None

    def _refresh_members(self) -> None:
        view = self.views.get(self.current or "")
        self.query_one(MemberList).show(view.members if view else [], self.me)

    def _refresh_status(self) -> None:
        state, detail = self._state
        rtt = self._rtt if self._show_rtt else ""
        # query, not query_one: a round trip measured while the app exits finds no bar.
        for bar in self.query(StatusBar):
            bar.show(state, self._address, self.me, rtt, detail)
