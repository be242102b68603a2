"""``triochat tui``: the command-line door into the chat app."""

from __future__ import annotations

import argparse
import os
import sys

from triochat import argtypes
from triochat.client import parse_url, tls_for
from triochat.errors import ConnectError
from triochat.protocol import ProtocolError, rules

DEFAULT_URL = "ws://127.0.0.1:5000"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``tui`` options, added to ``parser``."""
    parser.add_argument(
        "--url", default=DEFAULT_URL, help="server address (ws://, wss://, tcp:// or tls://)"
    )
    parser.add_argument("--nick", default=None, help="your nick (asked on screen when missing)")
    parser.add_argument("--room", default=None, help="room to join (default: the lobby)")
    parser.add_argument(
        "--password-env",
        metavar="VAR",
        default=None,
        help="read the nick's password from environment variable VAR (for scripts;"
        " asked on screen when the nick is registered and this is missing)",
    )
    parser.add_argument(
        "--cafile",
        metavar="PEM",
        help="CA certificate to trust for wss:// and tls:// (default: the system's CAs)",
    )


def run_tui(
    url: str,
    nick: str | None,
    room: str | None,
    password_env: str | None = None,
    cafile: str | None = None,
) -> int:
    """Run the chat app until the person quits; bad arguments are one line on stderr."""
    problem = _check(url, nick, room, cafile)
    password = None
    if password_env is not None:
        password = os.environ.get(password_env)
        if not password:
            problem = problem or f"--password-env: environment variable {password_env} is not set"
    if problem:
        print(f"triochat tui: {problem}", file=sys.stderr)
        return 2
    from tui.app import ChatApp  # Textual loads only when the app really runs

    app = ChatApp(url, nick, room.lower() if room else None, password=password, cafile=cafile)
    result = app.run()
    return app.return_code or int(result or 0)


def _check(url: str, nick: str | None, room: str | None, cafile: str | None) -> str | None:
    try:
        tls_for(parse_url(url), cafile)
        if nick is not None:
            rules.check_nick(nick)
        if room is not None:
            rules.check_room(room)
    except ConnectError as exc:
        return str(exc)
    except ProtocolError as exc:
        return exc.message
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argtypes.Parser(prog="python -m tui", description="The triochat chat client.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_tui(args.url, args.nick, args.room, args.password_env, args.cafile)
