"""Living in the app all day: scrollback, attention, rooms and topics, layouts, memory, TLS.

Every test drives the real app under Pilot against a real server on 127.0.0.1; the
other people are independent WebSocket clients (:class:`tests.tui.helpers.Peer`).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from textual.content import Content
from textual.widgets import Input

from tests.tui.helpers import Peer, ServerThread, until
from triochat import argtypes
from tui import cli
from tui.app import NEW_SINCE, ChatApp
from tui.config import Memory, TuiFile, load
from tui.log import CONTINUED, ChatLog
from tui.widgets import ChatInput, MemberList, RoomBar, RoomList, Tab

SIZE = (140, 36)


def log_text(app: ChatApp) -> list[str]:
    return [strip.text for strip in app.query_one(ChatLog).lines]


def title(app: ChatApp) -> str:
    """The log's title as the person reads it (Textual hands it back as markup)."""
    return Content.from_markup(app.query_one(ChatLog).border_title or "").plain


def seqs(app: ChatApp, room: str) -> list[int]:
    return [e.seq for e in app.views[room].lines if e.seq is not None]


async def connected(app: ChatApp, room: str = "lobby", *nicks: str) -> None:
    def there() -> bool:
        view = app.views.get(room)
        return (
            app.connection == "connected" and view is not None and set(nicks) <= set(view.members)
        )

    await until(there, f"connected, {nicks} in {room}")


class Ringing(ChatApp):
    """The app, counting the terminal bells it rings instead of ringing them."""

    rings = 0

    def bell(self) -> None:
        self.rings += 1


# --- 1. scrollback -------------------------------------------------------------------


async def chatter(url: str, count: int) -> Peer:
    """bob, having said ``line 0`` to ``line {count - 1}`` in the lobby."""
    bob = await Peer.connect(url, "bob")
    for number in range(count):
        await bob.say("lobby", f"line {number}")
    return bob


@pytest.fixture
def small_pages() -> Iterator[ServerThread]:
    """A server that sends 20 events of history on join, so scrollback must fetch the rest."""
    running = ServerThread(history_limit=20)
    running.start()
    yield running
    running.stop()


@pytest.mark.asyncio
async def test_page_up_scrolls_while_typing_and_loads_all_older_history(
    small_pages: ServerThread,
) -> None:
    await chatter(small_pages.url, 130)
    app = ChatApp(small_pages.url, "ada")
    async with app.run_test(size=SIZE) as pilot:
        await connected(app, "lobby", "bob")
        await pilot.press(*"half-typed")
        assert len(seqs(app, "lobby")) <= 22  # the join brought only the recent past
        for _ in range(60):
            if app.views["lobby"].at_start:
                break
            await pilot.press("pageup")
            await pilot.pause()
        await until(lambda: app.views["lobby"].at_start, "the start of the room's history")
        top = seqs(app, "lobby")
        assert top == list(range(1, top[-1] + 1))  # every event once, in order, no hole
        assert "line 0" in "\n".join(log_text(app))
        assert app.focused is app.query_one(ChatInput)
        assert app.query_one(ChatInput).value == "half-typed"  # PageUp never touched the input


@pytest.mark.asyncio
async def test_a_view_scrolled_back_holds_still_and_counts_new_messages(
    server: ServerThread,
) -> None:
    bob = await chatter(server.url, 60)
    app = ChatApp(server.url, "ada")
    async with app.run_test(size=SIZE) as pilot:
        await connected(app, "lobby", "bob")
        log = app.query_one(ChatLog)
        await pilot.press("shift+pageup")
        await pilot.pause()
        held = log.scroll_y
        assert not log.following
        assert held < log.max_scroll_y
        await bob.say("lobby", "while you read")
        await bob.say("lobby", "and more")
        await until(lambda: log.unseen == 2, "two new messages counted")
        assert log.scroll_y == held  # the view did not jump to the bottom
        assert log.border_subtitle == "2 new messages ↓ (Ctrl-End)"
        await pilot.press("ctrl+end")
        await pilot.pause()
        assert log.following
        assert log.unseen == 0
        assert not log.border_subtitle
        assert log_text(app)[-1].rstrip().endswith("bob: and more")
        await pilot.press("ctrl+home")
        await pilot.pause()
        assert log.scroll_y == 0


@pytest.mark.asyncio
async def test_typing_with_the_focus_elsewhere_goes_to_the_input(server: ServerThread) -> None:
    app = ChatApp(server.url, "ada")
    async with app.run_test(size=SIZE) as pilot:
        await connected(app)
        app.query_one(RoomList).focus()
        await pilot.pause()
        await pilot.press(*"hi")
        box = app.query_one(ChatInput)
        assert app.focused is box
        assert box.value == "hi"


# --- 2. attention ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_mentions_and_dms_are_marked_counted_and_rung(server: ServerThread) -> None:
    bob = await Peer.connect(server.url, "bob", rooms=["lobby", "dev"])
    app = Ringing(server.url, "ada", rooms=["lobby", "dev"], highlight=["deploy"])
    async with app.run_test(size=SIZE) as pilot:
        await connected(app, "dev", "bob")
        await until(lambda: app.current == "lobby", "the lobby in view")
        await bob.say("dev", "adam is not a mention")
        await bob.say("dev", "ADA, look here")
        await bob.say("dev", "the deploy is done")
        await until(lambda: app.views["dev"].unread == 3, "three unread in dev")
        dev = app.views["dev"]
        assert dev.attention == 2
        assert [e.attention for e in dev.lines[-3:]] == ["", "mention", "mention"]
        assert app.rings == 2
        await bob.send(type="dm", to="ada", text="psst")
        await until(lambda: "@bob" in app.views and app.views["@bob"].attention == 1, "a DM")
        assert app.rings == 3
        await bob.say("lobby", "ada: you are looking at this one")
        await until(lambda: "you are looking" in "\n".join(log_text(app)), "the visible mention")
        assert app.rings == 3  # seen as it came: no bell
        assert app.views["lobby"].lines[-1].attention == "mention"
        await pilot.press("ctrl+n")  # to dev: its counts are read
        assert (dev.unread, dev.attention) == (0, 0)
        await bob.say("lobby", "news from the lobby")
        await until(lambda: app.views["lobby"].unread == 1, "unread in the lobby")
        await pilot.press("ctrl+p")  # back to the lobby
        text = [line.strip() for line in log_text(app)]
        rule = next(i for i, line in enumerate(text) if NEW_SINCE in line)
        assert text[rule + 1].endswith("bob: news from the lobby")
        assert "you are looking" in text[rule - 1]


def test_the_room_list_sets_mentions_apart_from_traffic() -> None:
    quiet, busy, called = Tab("dev"), Tab("dev", unread=3), Tab("dev", unread=3, attention=1)
    assert quiet.label.plain == "#dev"
    assert busy.label.plain == called.label.plain == "#dev (3)"
    assert str(busy.label.spans[0].style) == "yellow"
    assert "reverse" in str(called.label.spans[0].style)
    assert Tab("@bob", 1, 1).label.plain == "@bob (1)"


# --- 3. rooms, topics, actions -------------------------------------------------------------


@pytest.mark.asyncio
async def test_join_topic_me_list_and_completion(server: ServerThread) -> None:
    bob = await Peer.connect(server.url, "bob", rooms=["lobby", "dev"])
    app = ChatApp(server.url, "ada")
    async with app.run_test(size=SIZE) as pilot:
        await connected(app, "lobby", "bob")
        await pilot.press(*"/join bad room!", "enter")
        await until(lambda: "usage: /join ROOM" in "\n".join(log_text(app)), "a usage line")
        assert "bad" not in app.views
        await pilot.press(*"/list", "enter")  # rooms listed are known to completion
        await until(lambda: any("#dev  1 member" in line for line in log_text(app)), "the list")
        await pilot.press(*"/join #d", "tab")
        assert app.query_one(ChatInput).value == "/join #dev "
        await pilot.press("enter")
        await connected(app, "dev", "bob")
        await until(lambda: app.current == "dev", "the dev view")
        await pilot.press(*"/me waves", "enter")
        said = await bob.wait_for(lambda e: e["type"] == "message" and e["from"] == "ada")
        assert (said["text"], said.get("action")) == ("waves", True)
        await until(lambda: any("* ada waves" in line for line in log_text(app)), "the action")
        await pilot.press(*"/topic [b]release[/b] at noon", "enter")
        topic = await bob.wait_for(lambda e: e["type"] == "topic")
        assert (topic["room"], topic["text"], topic["from"]) == (
            "dev",
            "[b]release[/b] at noon",
            "ada",
        )
        await until(lambda: app.views["dev"].topic == "[b]release[/b] at noon", "the topic kept")
        assert title(app) == "#dev — [b]release[/b] at noon"  # markup shown, not obeyed
        await pilot.press(*"/list", "enter")
        await until(lambda: any("#lobby  2 members" in line for line in log_text(app)), "list")
        assert any("#dev  2 members — [b]release[/b] at noon" in line for line in log_text(app))
        await pilot.press(*"/topic -delete", "enter")
        await until(lambda: app.views["dev"].topic == "", "the topic cleared")
        assert title(app) == "#dev"


@pytest.mark.asyncio
async def test_a_dm_view_follows_the_other_persons_nick(server: ServerThread) -> None:
    bob = await Peer.connect(server.url, "bob")
    app = ChatApp(server.url, "ada")
    async with app.run_test(size=SIZE) as pilot:
        await connected(app, "lobby", "bob")
        await pilot.press(*"/msg bob hi", "enter")
        await bob.wait_for(lambda e: e["type"] == "dm")
        assert app.current == "@bob"
        await bob.send(type="nick", nick="robert")
        await until(lambda: "@robert" in app.views, "the view renamed")
        assert "@bob" not in app.views
        assert app.current == "@robert"
        await pilot.press(*"still there?", "enter")
        said = await bob.wait_for(lambda e: e["type"] == "dm" and e["text"] == "still there?")
        assert said["to"] == "robert"


# --- 4. any terminal ------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("size", "rooms", "bar", "members"),
    [
        ((50, 20), False, True, False),
        ((80, 24), True, False, False),
        ((140, 40), True, False, True),
    ],
)
async def test_the_layout_fits_the_terminal_and_keys_toggle_panels(
    server: ServerThread, size: tuple[int, int], rooms: bool, bar: bool, members: bool
) -> None:
    app = ChatApp(server.url, "ada")
    async with app.run_test(size=size) as pilot:
        await connected(app)
        shown = (
            app.query_one(RoomList).display,
            app.query_one(RoomBar).display,
            app.query_one(MemberList).display,
        )
        assert shown == (rooms, bar, members)
        assert app.query_one(ChatLog).size.width >= size[0] - 40
        await pilot.press("f2", "f3")
        assert app.query_one(RoomList).display is not rooms
        assert app.query_one(RoomBar).display is rooms
        assert app.query_one(MemberList).display is not members


# --- 5. no forged lines ------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("width", [140, 50])
async def test_a_multi_line_message_cannot_pass_for_other_lines(
    server: ServerThread, width: int
) -> None:
    bob = await Peer.connect(server.url, "bob")
    app = ChatApp(server.url, "ada", timefmt=lambda ts: "09:30")
    async with app.run_test(size=(width, 24)):
        await connected(app, "lobby", "bob")
        await bob.say("lobby", "hello\n09:30 carol: send me your password\n\n09:30 dave: me too")
        await until(lambda: any("dave" in line for line in log_text(app)), "the message")
        lines = [line.rstrip() for line in log_text(app)]
        start = next(i for i, line in enumerate(lines) if "bob:" in line and "hello" in line)
        for forged in ("carol:", "dave:"):
            line = next(line for line in lines[start:] if forged in line)
            assert not line.startswith("09:30"), line
            assert line.lstrip().startswith(CONTINUED.strip()), line


# --- 6. remembers you --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_server_nick_and_rooms_are_remembered_and_hand_edits_kept(
    server: ServerThread, tmp_path: Path
) -> None:
    path = tmp_path / "triochat" / "tui.toml"
    path.parent.mkdir()
    path.write_text('highlight = ["deploy"]\nbell = false\n')
    app = ChatApp(server.url, "ada", memory=Memory(path, load(path)))
    async with app.run_test(size=SIZE) as pilot:
        await connected(app)
        await pilot.press(*"/join #dev", "enter")
        await connected(app, "dev")
        await until(lambda: load(path).rooms == ["lobby", "dev"], "the rooms remembered")
        await pilot.press(*"/part", "enter")
        await until(lambda: load(path).rooms == ["lobby"], "the part remembered")
    saved = load(path)
    assert (saved.url, saved.nick, saved.highlight, saved.bell) == (
        server.url,
        "ada",
        ["deploy"],
        False,
    )


def test_flags_override_the_file_and_room_repeats() -> None:
    parser = argtypes.Parser(prog="tui")
    cli.add_arguments(parser)
    saved = TuiFile(url="ws://example:1", nick="ada", rooms=["ops"], highlight=["x"], bell=False)
    merged = cli._merged(parser.parse_args(["--room", "#dev", "--room", "lobby"]), saved)
    assert (merged.url, merged.nick, merged.rooms) == ("ws://example:1", "ada", ["dev", "lobby"])
    merged = cli._merged(parser.parse_args(["--nick", "bob", "--bell"]), saved)
    assert (merged.nick, merged.rooms, merged.bell, merged.highlight) == (
        "bob",
        ["ops"],
        True,
        ["x"],
    )


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("colour = 'red'\n", "unknown field `colour`"),
        ("rooms = 'dev'\n", "Expected `array`, got `str`"),
        ("url = [\n", "tui.toml"),
        ("rooms = ['bad room']\n", "room"),
    ],
)
def test_a_bad_remembered_file_is_one_line(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "tui.toml"
    path.write_text(content)
    done = subprocess.run(
        [sys.executable, "-m", "tui", "--config", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert expected in done.stderr


# --- 7. TLS ----------------------------------------------------------------------------------


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[ServerThread, Path]]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile, cafile = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(cafile))
    running = ServerThread(tls=(str(certfile), str(keyfile)))
    running.start()
    yield running, cafile
    running.stop()


@pytest.mark.asyncio
@pytest.mark.parametrize("scheme", ["wss", "tls"])
async def test_wss_and_tls_urls_connect_with_the_given_ca(
    tls_server: tuple[ServerThread, Path], scheme: str
) -> None:
    server, cafile = tls_server
    url = next(u for u in server.urls if u.startswith(f"{scheme}://"))
    app = ChatApp(url, "ada", cafile=str(cafile))
    async with app.run_test(size=SIZE) as pilot:
        await connected(app)
        await pilot.press(*"/help", "enter")
        assert app.query_one(ChatInput).value == ""
        assert isinstance(app.focused, Input)
