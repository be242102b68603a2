"""``triochat account add|remove|list|passwd``: the operator's hand on registered nicks.

It works on the server's data file directly, stopped or running (SQLite WAL:
a running server reads accounts at every login, so a change counts at once).
Exit codes: 0 done, 1 it could not be done (unknown nick, already registered,
unreadable file), 2 bad usage (invalid nick, empty password). Every failure is
one line on stderr.
"""

from __future__ import annotations

import argparse
import getpass
import sqlite3
import sys
from collections.abc import Callable

from triochat import argtypes
from triochat.protocol import ProtocolError, rules
from triochat.server.accounts import (
    AccountError,
    AccountExists,
    AccountStore,
    NoSuchAccount,
    check_password,
    hash_password,
)
from triochat.server.store import default_db_path

EXIT_FAILED = 1
EXIT_USAGE = 2


class _Usage(Exception):
    """Bad input from the person (exit 2)."""


def add_account_parser(commands: argparse._SubParsersAction[argtypes.Parser]) -> None:
    parser = commands.add_parser(
        "account",
        help="manage registered nicks",
        description="Add, remove, list registered nicks or change a password, in the server's"
        " data file (the server may be running). Passwords are read from standard input"
        " when it is not a terminal (one line), else asked for without echo.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in [
        ("add", "register NICK with a password"),
        ("remove", "delete NICK's account"),
        ("passwd", "change NICK's password"),
    ]:
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("nick", metavar="NICK")
        _db_argument(action)
    listing = actions.add_parser("list", help="print every registered nick, one a line")
    _db_argument(listing)
    parser.set_defaults(run=run_account)


def _db_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        type=argtypes.file_in_existing_folder,
        help=f"the server's data file (default: {default_db_path()})",
    )


def run_account(args: argparse.Namespace, read_password: Callable[[], str] | None = None) -> int:
    path = args.db or _default_path()
    try:
        nick = _nick(args)
        store = AccountStore(path)
    except _Usage as exc:
        return _fail(str(exc), EXIT_USAGE)
    except sqlite3.Error as exc:
        return _fail(f"cannot open {path}: {exc}", EXIT_FAILED)
    try:
        return _act(store, args.action, nick, read_password or _read_password)
    except _Usage as exc:
        return _fail(str(exc), EXIT_USAGE)
    except AccountError as exc:
        return _fail(str(exc), EXIT_FAILED)
    except sqlite3.Error as exc:
        return _fail(f"{path}: {exc}", EXIT_FAILED)
    finally:
        store.close()


def _act(store: AccountStore, action: str, nick: str, read_password: Callable[[], str]) -> int:
    if action == "list":
        for registered in store.nicks():
            print(registered)
        return 0
    if action == "remove":
        store.remove(nick)
        print(f"{nick}: removed")
        return 0
    # Checked before the password is asked for (and checked again by the write).
    if action == "passwd" and store.lookup(nick) is None:
        raise NoSuchAccount(f"{nick}: no such account")
    if action == "add" and store.lookup(nick) is not None:
        raise AccountExists(f"{nick}: already registered")
    password_hash = hash_password(_password(read_password))
    if action == "add":
        store.add(nick, password_hash)
        print(f"{nick}: registered")
    else:
        store.set_hash(nick, password_hash)
        print(f"{nick}: password changed")
    return 0


def _default_path() -> str:
    """The server's default data file; its folder is made here, as ``serve`` does."""
    path = default_db_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    return str(path)


def _nick(args: argparse.Namespace) -> str:
    nick = getattr(args, "nick", "")
    if args.action == "list":
        return ""
    try:
        return rules.check_nick(nick)
    except ProtocolError as exc:
        raise _Usage(f"{nick!r}: {exc.message}") from None


def _password(read_password: Callable[[], str]) -> str:
    try:
        return check_password(read_password())
    except ValueError as exc:
        raise _Usage(str(exc)) from None


def _read_password() -> str:
    """One line of stdin when it is not a terminal, else asked for (twice) without echo."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    password = getpass.getpass("password: ")
    if getpass.getpass("again: ") != password:
        raise _Usage("the passwords differ")
    return password


def _fail(message: str, code: int) -> int:
    print(f"triochat account: {message}", file=sys.stderr)
    return code
