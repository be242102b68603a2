"""``triochat tui``: the command-line door into the chat app.

Settings come from flags, then ``tui.toml`` (:mod:`tui.config`), then the defaults:
a flag given wins, a flag left out takes what the last run remembered.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from triochat import argtypes
from triochat.client import parse_url, tls_for
from triochat.errors import ConnectError
from triochat.protocol import ProtocolError, rules
from tui.commands import room_name
from tui.config import ConfigError, Memory, TuiFile, default_path, load

DEFAULT_URL = "ws://127.0.0.1:5000"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``tui`` options, added to ``parser``."""
    parser.add_argument(
        "--url",
        default=None,
        help=f"server address (ws://, wss://, tcp:// or tls://; default: the last one, else"
        f" {DEFAULT_URL})",
    )
    parser.add_argument(
        "--nick", default=None, help="your nick (default: the last one; asked on screen if none)"
    )
    parser.add_argument(
        "--room",
        action="append",
        default=None,
        metavar="ROOM",
        help="a room to join; repeat for more (default: the rooms you were in, else the lobby)",
    )
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
    parser.add_argument(
        "--highlight",
        action="append",
        default=None,
        metavar="WORD",
        help="a word that counts as a mention besides your nick; repeat for more",
    )
    parser.add_argument(
        "--bell",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="ring the terminal bell on a mention or DM you cannot see (default: on)",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        default=None,
        help="where the TUI remembers server, nick and rooms"
        " (default: $XDG_CONFIG_HOME/triochat/tui.toml)",
    )


def run_tui(args: argparse.Namespace) -> int:
    """Run the chat app until the person quits; bad arguments are one line on stderr."""
    path = args.config or default_path()
    try:
        saved = load(path)
    except ConfigError as exc:
        return _usage(str(exc))
    settings = _merged(args, saved)
    problem = _check(settings, args.cafile)
    if problem:
        return _usage(problem)
    password = None
    if args.password_env is not None:
        password = os.environ.get(args.password_env)
        if not password:
            return _usage(f"--password-env: environment variable {args.password_env} is not set")
    from tui.app import ChatApp  # Textual loads only when the app really runs

    app = ChatApp(
        settings.url or DEFAULT_URL,
        settings.nick,
        rooms=settings.rooms,
        password=password,
        cafile=args.cafile,
        highlight=settings.highlight,
        bell=settings.bell,
        memory=Memory(path, saved),
    )
    result = app.run()
    return app.return_code or int(result or 0)


def _merged(args: argparse.Namespace, saved: TuiFile) -> TuiFile:
    return TuiFile(
        url=args.url or saved.url,
        nick=args.nick or saved.nick,
        rooms=[room_name(r) for r in args.room] if args.room else saved.rooms,
        highlight=args.highlight or saved.highlight,
        bell=saved.bell if args.bell is None else args.bell,
    )


def _usage(problem: str) -> int:
    print(f"triochat tui: {problem}", file=sys.stderr)
    return 2


def _check(settings: TuiFile, cafile: str | None = None) -> str | None:
    try:
        tls_for(parse_url(settings.url or DEFAULT_URL), cafile)
        if settings.nick is not None:
            rules.check_nick(settings.nick)
        for room in settings.rooms:
            rules.check_room(room)
    except ConnectError as exc:
        return str(exc)
    except ProtocolError as exc:
        return exc.message
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argtypes.Parser(prog="python -m tui", description="The triochat chat client.")
    add_arguments(parser)
    return run_tui(parser.parse_args(argv))
