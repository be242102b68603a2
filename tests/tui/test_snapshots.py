"""What the screen looks like, pinned as SVG snapshots (``pytest --snapshot-update`` to accept).

Deterministic by construction: a fixed clock format, nick colours from a fixed
hash, no round-trip figure, and a fixed address label instead of the test
server's random port. The chat itself comes from a real server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from textual.pilot import Pilot

from tests.tui.helpers import ServerThread, until
from tui.app import ChatApp
from tui.widgets import NickScreen

Snap = Callable[..., bool]
SIZE = (100, 24)


def make_app(server: ServerThread, nick: str | None) -> ChatApp:
    return ChatApp(
        server.url,
        nick,
        timefmt=lambda ts: "09:30",
        show_rtt=False,
        address_label="ws://127.0.0.1:5000",
        ping_interval=3600.0,
    )


def in_room(app: ChatApp, room: str, nick: str) -> bool:
    view = app.views.get(room)
    return app.connection == "connected" and view is not None and nick in view.members


@pytest.mark.parametrize("size", [(50, 20), (80, 24), (140, 40)], ids=["50x20", "80x24", "140x40"])
def test_main_screen(snap_compare: Snap, server: ServerThread, size: tuple[int, int]) -> None:
    """The same chat at three sizes: the panels that fit, wrapped and multi-line messages
    indented under their text, a mention highlighted, an unread room and a topic."""
    bob = server.bot("bob", ["lobby", "dev"])
    bob.say("lobby", "good morning")
    bob.say(
        "lobby", "ada: a long line that mentions you and wraps under its own text at every size"
    )
    bob.say("lobby", "two lines:\nbob: this one cannot pass for a message of its own")
    # Backslash, x, 1, b: the server refuses a real ESC in text (rules.check_text), and
    # these are the characters the TUI shows for one (tests/tui/test_parts.py).
    bob.say("lobby", "[bold]not bold[/] \\x1b[31mnot red")
    bob.say("lobby", "waves at everyone", action=True)
    bob.topic("lobby", "standup at ten · be kind")
    app = make_app(server, "ada")

    async def run_before(pilot: Pilot[int]) -> None:
        await until(lambda: in_room(app, "lobby", "bob"), "bob in the lobby")
        await until(lambda: app.views["lobby"].topic != "", "the lobby's topic")
        await pilot.press(*"/join dev", "enter")
        await until(lambda: app.current == "dev" and in_room(app, "dev", "bob"), "the dev view")
        await pilot.press("ctrl+p")
        await asyncio.to_thread(bob.say, "dev", "over here")
        await until(lambda: app.views["dev"].unread == 1, "an unread count")
        await pilot.press(*"hi bob", "enter")
        await until(lambda: any("hi bob" in line.plain for line in app.views["lobby"].lines), "ada")

    assert snap_compare(app, terminal_size=size, run_before=run_before)


def test_nick_prompt_after_a_refusal(snap_compare: Snap, server: ServerThread) -> None:
    server.bot("bob", ["lobby"])
    app = make_app(server, None)

    async def run_before(pilot: Pilot[int]) -> None:
        await pilot.press(*"bob", "enter")
        await until(lambda: app.link is not None and isinstance(app.screen, NickScreen), "re-ask")

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
