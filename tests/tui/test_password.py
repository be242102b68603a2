"""Registered nicks in the app: the password is asked for, masked, or taken from the caller."""

from __future__ import annotations

import subprocess
import sys

import pytest
from textual.widgets import Input, Label

from tests.tui.helpers import Peer, ServerThread, until
from tui.app import ChatApp
from tui.widgets import NickScreen, PasswordScreen

SIZE = (140, 36)
PASSWORD = "open sesame"


async def register(server: ServerThread, nick: str, password: str) -> None:
    """Register ``nick`` over the wire, as its owner would, and leave."""
    owner = await Peer.connect(server.url, nick)
    await owner.send(type="register", password=password)
    await owner.wait_for(lambda e: e["type"] == "notice" and e["code"] == "registered")
    await owner.quit()


def prompted(app: ChatApp) -> bool:
    """The password prompt is up, its parts mounted (the screen is current a frame before)."""
    return isinstance(app.screen, PasswordScreen) and bool(app.screen.query("#password-reason"))


def password_reason(app: ChatApp) -> str:
    return str(app.screen.query_one("#password-reason", Label).render())


@pytest.mark.asyncio
async def test_a_registered_nick_is_asked_for_its_password_masked(server: ServerThread) -> None:
    await register(server, "ada", PASSWORD)
    app = ChatApp(server.url, "ada")
    async with app.run_test(size=SIZE) as pilot:
        await until(lambda: prompted(app), "the password prompt")
        assert "ada is registered" in password_reason(app)
        box = app.screen.query_one("#password-input", Input)
        assert box.password  # masked on screen
        await pilot.press(*"wrong", "enter")
        await until(lambda: "wrong password" in password_reason(app), "the refusal")
        await pilot.press(*PASSWORD, "enter")
        await until(lambda: app.connection == "connected", "connected")
        assert app.me == "ada"


@pytest.mark.asyncio
async def test_escape_at_the_password_prompt_picks_another_nick(server: ServerThread) -> None:
    await register(server, "ada", PASSWORD)
    app = ChatApp(server.url, "ada")
    async with app.run_test(size=SIZE) as pilot:
        await until(lambda: prompted(app), "the password prompt")
        await pilot.press("escape")
        await until(
            lambda: isinstance(app.screen, NickScreen) and bool(app.screen.query("#nick-input")),
            "the nick prompt",
        )
        app.screen.query_one("#nick-input", Input).value = ""
        await pilot.press(*"guest", "enter")
        await until(lambda: app.connection == "connected", "connected")
        assert app.me == "guest"


@pytest.mark.asyncio
async def test_a_given_password_logs_in_without_asking(server: ServerThread) -> None:
    await register(server, "ada", PASSWORD)
    app = ChatApp(server.url, "ada", password=PASSWORD)
    async with app.run_test(size=SIZE):
        await until(lambda: app.connection == "connected", "connected")
        assert not isinstance(app.screen, PasswordScreen)
        assert app.me == "ada"


def test_password_env_must_name_a_set_variable() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "triochat",
            "tui",
            "--nick",
            "ada",
            "--password-env",
            "NO_SUCH_VAR_X",
        ],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2
    assert done.stderr == (
        "triochat tui: --password-env: environment variable NO_SUCH_VAR_X is not set\n"
    )
