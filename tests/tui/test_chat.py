"""The app against a real server, driven as a person would: keys in, screen out."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Input, Label

from tests.tui.helpers import Peer, ServerThread, until
from tui.app import ChatApp
from tui.link import Backoff
from tui.log import ChatLog
from tui.sync import HISTORY_CHANGED
from tui.widgets import ChatInput, MemberList, NickScreen, RoomList, StatusBar

pytestmark = pytest.mark.asyncio
SIZE = (140, 36)
SLOW = Backoff(base=60.0, cap=60.0)
"""A reconnect delay no test waits out: reconnecting is triggered with Ctrl-R."""


def screen_log(app: ChatApp) -> str:
    """The message log as the person sees it."""
    return "\n".join(strip.text for strip in app.query_one(ChatLog).lines)


def rendered(widget: RoomList | MemberList | StatusBar) -> str:
    """What ``widget`` shows, as text."""
    return "\n".join(strip.text for strip in widget.render_lines(widget.region.reset_offset))


def reason(app: ChatApp) -> str:
    """The reason line of the nick prompt."""
    return str(app.screen.query_one("#nick-reason", Label).render())


async def typed(pilot: Pilot[int], text: str) -> None:
    await pilot.press(*text, "enter")


async def ready(app: ChatApp, *nicks: str) -> None:
    """Connected, in a room, with ``nicks`` in its member list."""
    await until(lambda: app.connection == "connected" and app.current is not None, "connected")
    view = app.views[app.current or ""]
    await until(lambda: all(n in view.members for n in nicks), f"{nicks} in the member list")


async def test_typed_message_reaches_another_client_and_back(server: ServerThread) -> None:
    bob = await Peer.connect(server.url, "bob")
    app = ChatApp(server.url, "ada")
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, "bob")
        await typed(pilot, "hello bob")
        said = await bob.wait_for(lambda e: e["type"] == "message" and e["from"] == "ada")
        assert said["text"] == "hello bob"
        await bob.say("lobby", "hi ada")
        await until(lambda: "bob: hi ada" in screen_log(app), "bob's message on screen")
        assert "ada ▸ hello bob" in screen_log(app)
        assert "bob" in rendered(app.query_one(MemberList))
    await bob.close()


async def test_switching_rooms_shows_each_log_and_unread_counts(server: ServerThread) -> None:
    bob = await Peer.connect(server.url, "bob", rooms=["lobby", "dev"])
    app = ChatApp(server.url, "ada")
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, "bob")
        await typed(pilot, "/join dev")
        await until(lambda: app.current == "dev", "the dev view")
        await bob.say("lobby", "lobby news")
        await until(lambda: "#lobby (1)" in rendered(app.query_one(RoomList)), "an unread count")
        assert "lobby news" not in screen_log(app)
        await pilot.press("ctrl+p")
        assert app.current == "lobby"
        assert "bob: lobby news" in screen_log(app)
        assert "(1)" not in rendered(app.query_one(RoomList))
        await pilot.press("ctrl+n")
        assert app.current == "dev"
        assert "lobby news" not in screen_log(app)
        await typed(pilot, "/join lobby")  # an existing view: just switch
        assert app.current == "lobby"
    await bob.close()


async def test_tab_completes_nicks_and_commands(server: ServerThread) -> None:
    bob = await Peer.connect(server.url, "bobby")
    app = ChatApp(server.url, "ada")
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, "bobby")
        box = app.query_one(ChatInput)
        await pilot.press("b", "o", "tab")
        assert box.value == "bobby: "
        box.value = ""
        await pilot.press("/", "j", "o", "tab")
        assert box.value == "/join "
        box.value = ""
        await pilot.press(*"/msg b", "tab")
        assert box.value == "/msg bobby "
        assert app.focused is box  # Tab did not move the focus away
    await bob.close()


async def test_up_and_down_walk_input_history(server: ServerThread) -> None:
    app = ChatApp(server.url, "ada")
    async with app.run_test(size=SIZE) as pilot:
        await ready(app)
        await typed(pilot, "first")
        await typed(pilot, "second")
        box = app.query_one(ChatInput)
        await pilot.press("up")
        assert box.value == "second"
        await pilot.press("up", "up")
        assert box.value == "first"
        await pilot.press("down")
        assert box.value == "second"
        await pilot.press("down")
        assert box.value == ""


async def test_nick_change_to_a_taken_nick_shows_the_error(server: ServerThread) -> None:
    bob = await Peer.connect(server.url, "bob")
    app = ChatApp(server.url, "ada")
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, "bob")
        await typed(pilot, "/nick bob")
        await until(lambda: "nick_taken" in screen_log(app), "the error on screen")
        assert "the nick 'bob' is taken" in screen_log(app)
        assert app.me == "ada"
        await typed(pilot, "/nick ada2")
        await until(lambda: "ada is now known as ada2" in screen_log(app), "the rename notice")
        assert "as ada2" in rendered(app.query_one(StatusBar))
        await bob.wait_for(lambda e: e["type"] == "nick" and e["new"] == "ada2")
    await bob.close()


async def test_direct_messages_open_a_dm_view(server: ServerThread) -> None:
    bob = await Peer.connect(server.url, "bob")
    app = ChatApp(server.url, "ada")
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, "bob")
        await typed(pilot, "/msg bob psst")
        assert app.current == "@bob"
        dm = await bob.wait_for(lambda e: e["type"] == "dm" and e["from"] == "ada")
        assert dm["text"] == "psst"
        await typed(pilot, "and more")  # plain text in a DM view is a DM
        await bob.wait_for(lambda e: e["type"] == "dm" and e["text"] == "and more")
        await bob.send(type="dm", to="ada", text="ok")
        await until(lambda: "bob: ok" in screen_log(app), "bob's DM in the view")
    await bob.close()


async def test_who_lists_members(server: ServerThread) -> None:
    bob = await Peer.connect(server.url, "bob")
    app = ChatApp(server.url, "ada")
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, "bob")
        await typed(pilot, "/who")
        await until(lambda: "in #lobby: " in screen_log(app), "the member line")
        assert "bob" in screen_log(app).split("in #lobby: ")[1]
    await bob.close()


async def test_text_from_others_is_shown_literally(server: ServerThread) -> None:
    bob = await Peer.connect(server.url, "bob")
    app = ChatApp(server.url, "ada")
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, "bob")
        # The server refuses control characters in text (ESC included: rules.check_text),
        # so what reaches the TUI here is markup and a bidi override, which it shows as
        # they are; its escaping of control characters is tests/tui/test_parts.py's.
        await bob.say("lobby", "[bold red]loud[/] \u202epwned end")
        await until(lambda: " end" in screen_log(app), "bob's message")
        line = next(s for s in app.query_one(ChatLog).lines if "loud" in s.text)
        assert r"[bold red]loud[/] \u202epwned end" in line.text
        assert not any("\u202e" in segment.text for segment in line)
        text_style = next(seg.style for seg in line if "loud" in seg.text)
        assert text_style is None or not (text_style.bold or text_style.color)
        await pilot.pause()
    await bob.close()


async def test_server_not_running_is_one_clear_line(server: ServerThread) -> None:
    url = server.url
    await server.astop()
    app = ChatApp(url, "ada", backoff=SLOW)
    async with app.run_test(size=SIZE):
        await until(lambda: app.connection == "waiting", "the waiting state")
        assert "connection refused (is the server running?)" in screen_log(app)
        assert "Traceback" not in screen_log(app)
        assert "waiting" in rendered(app.query_one(StatusBar))


async def test_the_websocket_port_given_as_tcp_is_named_at_once(server: ServerThread) -> None:
    hostport = server.url.removeprefix("ws://")
    app = ChatApp(f"tcp://{hostport}", "ada", backoff=SLOW)
    async with app.run_test(size=SIZE):
        await until(lambda: app.connection == "waiting", "the waiting state")
        shown = " ".join(screen_log(app).split())  # as wrapped on screen
        assert f"this looks like a WebSocket port; use ws://{hostport}" in shown


@pytest.mark.parametrize("durable", [False, True], ids=["memory", "sqlite"])
async def test_restarted_server_missed_messages_appear_exactly_once(
    tmp_path: Path, durable: bool
) -> None:
    """A server that forgot everything (numbering restarts) and one that kept its history."""
    server = ServerThread(str(tmp_path / "history.db") if durable else None)
    server.start()
    try:
        await restart_scenario(server, durable)
    finally:
        await server.astop()


async def restart_scenario(server: ServerThread, durable: bool) -> None:
    bob = await Peer.connect(server.url, "bob")
    app = ChatApp(server.url, "ada", backoff=SLOW)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, "bob")
        await bob.say("lobby", "before")
        await until(lambda: "bob: before" in screen_log(app), "the first message")
        await server.astop()
        await until(lambda: app.connection == "waiting", "the disconnect")
        assert "waiting" in rendered(app.query_one(StatusBar))
        server.start(port=server.port)
        bob = await Peer.connect(server.url, "bob")
        for text in ("away 1", "away 2", "away 3"):
            await bob.say("lobby", text)
        await pilot.press("ctrl+r")
        await until(lambda: "bob: away 3" in screen_log(app), "the missed messages")
        await bob.say("lobby", "after")
        await until(lambda: "bob: after" in screen_log(app), "a live message")
        log = screen_log(app)
        lines = ["bob: before", "bob: away 1", "bob: away 2", "bob: away 3", "bob: after"]
        assert [log.count(line) for line in lines] == [1, 1, 1, 1, 1]
        assert [log.index(line) for line in lines] == sorted(log.index(line) for line in lines)
        assert app.connection == "connected"
        # Memory-only: a new history (new server_id); SQLite: the same one, resumed exactly.
        assert log.count(HISTORY_CHANGED) == (0 if durable else 1)
        # Replayed leaves and joins do not edit the member list: the server's list stands.
        assert sorted(app.views["lobby"].members) == ["ada", "bob"]
    await bob.close()


async def test_a_changed_history_shows_recent_history_then_resumes_on_it(tmp_path: Path) -> None:
    """Restarted on another SQLite file: its seqs run past ours, so only ``server_id`` tells.

    The reconnect's ``hello`` resumes from our old seq, and the new server replays the
    tail after it: without the server_id check ``new 1`` and ``new 2`` would be missing.
    The next restart keeps that file (same ``server_id``) and resumes exactly.
    """
    server = ServerThread(str(tmp_path / "first.db"))
    server.start()
    try:
        await changed_history_scenario(server, tmp_path / "second.db")
    finally:
        await server.astop()


async def changed_history_scenario(server: ServerThread, second_db: Path) -> None:
    bob = await Peer.connect(server.url, "bob")
    app = ChatApp(server.url, "ada", backoff=SLOW)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, "bob")
        await bob.say("lobby", "before")  # seq 3: bob joined 1, ada joined 2
        await until(lambda: "bob: before" in screen_log(app), "the first message")
        await bounce(server, app, second_db)
        bob = await Peer.connect(server.url, "bob")
        new = [f"new {n}" for n in range(1, 7)]  # seqs 2..7 on the new history
        for text in new:
            await bob.say("lobby", text)
        await pilot.press("ctrl+r")
        await until(lambda: "bob: new 6" in screen_log(app), "the recent history")
        await until(lambda: app.connection == "connected", "the reconnect")
        await bounce(server, app, second_db)
        bob = await Peer.connect(server.url, "bob")
        await bob.say("lobby", "resumed")
        await pilot.press("ctrl+r")
        await until(lambda: "bob: resumed" in screen_log(app), "the missed message")
        await bob.say("lobby", "after")
        await until(lambda: "bob: after" in screen_log(app), "a live message")
        log = screen_log(app)
        lines = ["bob: before", HISTORY_CHANGED, *[f"bob: {t}" for t in new], "bob: resumed"]
        lines.append("bob: after")
        assert [log.count(line) for line in lines] == [1] * len(lines)
        assert [log.index(line) for line in lines] == sorted(log.index(line) for line in lines)
        assert sorted(app.views["lobby"].members) == ["ada", "bob"]
    await bob.close()


async def bounce(server: ServerThread, app: ChatApp, db: Path) -> None:
    """Stop the server, wait for the app to notice, start it again on ``db``, same port."""
    await server.astop()
    await until(lambda: app.connection == "waiting", "the disconnect")
    server.db_path = str(db)
    server.start(port=server.port)


async def test_nick_prompt_reasks_with_the_reason(server: ServerThread) -> None:
    bob = await Peer.connect(server.url, "bob")
    app = ChatApp(server.url, None)
    async with app.run_test(size=SIZE) as pilot:
        assert isinstance(app.screen, NickScreen)
        app.screen.query_one("#nick-input", Input).value = "no/good"
        await pilot.press("enter")
        assert "a nick uses letters" in reason(app)
        app.screen.query_one("#nick-input", Input).value = ""
        await typed(pilot, "bob")
        await until(
            lambda: (
                isinstance(app.screen, NickScreen)
                and app.link is not None
                and bool(app.screen.query("#nick-reason"))
            ),
            "re-ask",
        )
        await until(lambda: "bob: the nick 'bob' is taken" in reason(app), "the reason")
        assert app.screen.query_one("#nick-input", Input).value == "bob"
        app.screen.query_one("#nick-input", Input).value = ""
        await typed(pilot, "ada")
        await ready(app, "bob")
        assert app.me == "ada"
    await bob.close()


@pytest.mark.parametrize("how", ["/quit", "ctrl+c", "ctrl+q"])
async def test_quitting_stops_the_trio_side(server: ServerThread, how: str) -> None:
    bob = await Peer.connect(server.url, "bob")
    app = ChatApp(server.url, "ada")
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, "bob")
        if how == "/quit":
            await typed(pilot, "/quit see you")
        else:
            await pilot.press(how)
        await until(lambda: app.guest.finished, "the Trio side to finish")
        await until(lambda: not app.is_running, "the app to exit")
    assert app.guest.finished
    left = await bob.wait_for(lambda e: e["type"] == "left" and e["nick"] == "ada")
    assert left["reason"] == "quit"
    await bob.close()
