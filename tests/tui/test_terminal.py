"""A person's view: the real ``triochat`` commands in a real terminal (tmux), two people chatting.

The screen is read with ``capture-pane`` until what a person would wait for is
there (or a deadline passes); keys are typed with ``send-keys``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from triochat.client import open_client
from triochat.protocol.events import Ack

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.skipif(
    shutil.which("tmux") is None, reason="needs tmux (make test installs it)"
)


# Without COLUMNS and LINES (pytest's terminal sets them): the panes' own size must rule.
TERMINAL_ENV = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}


class Tmux:
    def __init__(self) -> None:
        self.socket = f"triochat-test-{uuid.uuid4().hex[:8]}"

    def run(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, *args],
            capture_output=True,
            text=True,
            check=True,
            env=TERMINAL_ENV,
        )
        return done.stdout

    def screen(self, target: str) -> str:
        return self.run("capture-pane", "-p", "-t", target)

    def wait_for(self, target: str, text: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen(target)
            if text in screen:
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never appeared on {target}:\n{screen}")
            time.sleep(0.1)

    def type(self, target: str, text: str) -> None:
        self.run("send-keys", "-t", target, "-l", text)
        self.run("send-keys", "-t", target, "Enter")


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    session = Tmux()
    yield session
    subprocess.run(["tmux", "-L", session.socket, "kill-server"], capture_output=True, check=False)


@pytest.fixture
def server_url() -> Iterator[str]:
    process = subprocess.Popen(
        [
            *(str(BIN / "triochat"), "serve", "--port", "0", "--tcp-port", "0", "--no-history"),
            *("--rate-limit", "0"),  # the scrollback check posts its history in one burst
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    url = process.stdout.readline().split()[1]
    process.stdout.readline()
    yield url
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0


def test_two_people_chat_in_real_terminals_and_quit_cleanly(
    tmux: Tmux, server_url: str, tmp_path: Path
) -> None:
    tui = f"{BIN / 'triochat'} tui --url {server_url} --config {tmp_path / 'tui.toml'}"
    tmux.run(
        "new-session",
        "-d",
        "-s",
        "chat",
        "-x",
        "110",
        "-y",
        "30",
        f"{tui} --nick ada; echo ADA-EXIT=$?; sleep 30",
    )
    tmux.run("set-option", "-g", "default-size", "110x30")  # new windows: wide, members shown
    tmux.run("new-window", "-t", "chat", f"{tui} --nick bob; echo BOB-EXIT=$?; sleep 30")
    tmux.wait_for("chat:0", "connected")
    tmux.wait_for("chat:1", "connected")
    tmux.type("chat:0", "hello [bold]bob[/bold]")
    screen = tmux.wait_for("chat:1", "ada: hello [bold]bob[/bold]")  # literally, not bold
    assert "bob" in screen.split("members", 1)[1], screen
    tmux.type("chat:1", "/quit")
    tmux.wait_for("chat:1", "BOB-EXIT=0")
    tmux.wait_for("chat:0", "← bob quit")
    tmux.run("send-keys", "-t", "chat:0", "C-q")
    screen = tmux.wait_for("chat:0", "ADA-EXIT=0")
    assert "╭" not in screen  # the app's screen is gone: the terminal is back to the shell


def post(url: str, nick: str, texts: list[str]) -> None:
    """``nick`` says ``texts`` in the lobby, waits until the server has them all, and leaves."""

    async def main() -> None:
        async with open_client(url, nick) as client:
            for number, text in enumerate(texts):
                await client.say("lobby", text, number)
            acked = 0
            async for event in client:
                acked += isinstance(event, Ack)
                if acked == len(texts):
                    return

    trio.run(main)


def backgrounds(line: str) -> set[str]:
    """The background colours a captured (``capture-pane -e``) line sets."""
    return set(re.findall(r"\x1b\[[0-9;]*?(48;[25];[0-9;]+?)m", line))


def test_scrollback_mention_and_narrow_layout_in_a_real_terminal(
    tmux: Tmux, server_url: str, tmp_path: Path
) -> None:
    post(server_url, "bob", [f"line {n}" for n in range(120)])
    tui = f"{BIN / 'triochat'} tui --url {server_url} --config {tmp_path / 'tui.toml'}"
    tmux.run("new-session", "-d", "-s", "chat", "-x", "50", "-y", "20", f"{tui} --nick ada")
    screen = tmux.wait_for("chat:0", "line 119")
    assert screen.splitlines()[0].strip() == "#lobby"  # the room list is a one-line bar
    assert "members" not in screen
    assert "rooms" not in screen
    for _ in range(40):  # PageUp while typing: older history loads at the top
        tmux.run("send-keys", "-t", "chat:0", "PPage")
        if "line 0" in tmux.screen("chat:0"):
            break
        time.sleep(0.1)
    screen = tmux.wait_for("chat:0", "line 0")
    assert "bob joined lobby" in screen
    post(server_url, "carol", ["ada: are you there?"])
    tmux.wait_for("chat:0", "1 new message ↓")  # held where it was, counting what came
    tmux.run("send-keys", "-t", "chat:0", "C-End")
    tmux.wait_for("chat:0", "ada: are you there?")
    lines = tmux.run("capture-pane", "-e", "-p", "-t", "chat:0").splitlines()
    mention = next(line for line in lines if "are you there" in line)
    plain = next(line for line in lines if "line 119" in line)
    assert backgrounds(mention) - backgrounds(plain), "the mention is not set apart"
    tmux.run("send-keys", "-t", "chat:0", "C-q")
