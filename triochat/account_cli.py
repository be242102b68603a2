"""``triochat account add|remove|list|passwd``: the operator's hand on registered nicks.

It works on the server's data file directly, stopped or running (SQLite WAL:
a running server reads accounts at every login, so a change counts at once); with
``--redis URL``, on the accounts every node of that Redis shares.
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
from typing import Protocol

import trio

from triochat import argtypes
from triochat.errors import RedisError
from triochat.protocol import ProtocolError, rules
from triochat.server.accounts import (
    Account,
    AccountError,
    AccountExists,
    AccountStore,
    NoSuchAccount,
    check_password,
    hash_password,
)
from triochat.server.redis_url import parse_redis_url
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


def data_arguments(parser: argparse.ArgumentParser, in_redis: str) -> None:
    """``--db FILE`` or ``--redis URL``: where an operator's command finds the server's
    data (``in_redis`` says what it works on there)."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--db",
        type=argtypes.file_in_existing_folder,
        help=f"the server's data file (default: {default_db_path()})",
    )
    where.add_argument("--redis", type=argtypes.redis_url, metavar="URL", help=in_redis)


def _db_argument(parser: argparse.ArgumentParser) -> None:
    data_arguments(parser, "the accounts of the nodes sharing this Redis (serve --redis)")
    parser.add_argument(
        "--redis-cluster", action="store_true", help="the --redis URL is one node of a cluster"
    )
    parser.add_argument(
        "--redis-cafile", metavar="PEM", help="CA certificates for a rediss:// server"
    )


class Book(Protocol):
    """The accounts an action works on: the data file's, or Redis's."""

    async def find(self, nick: str) -> Account | None: ...
    async def add(self, nick: str, password_hash: str) -> None: ...
    async def set_hash(self, nick: str, password_hash: str) -> None: ...
    async def remove(self, nick: str) -> None: ...
    async def nicks(self) -> list[str]: ...


class _FileBook:
    """An :class:`AccountStore` as a :class:`Book` (this process has nothing else to wait for)."""

    def __init__(self, store: AccountStore) -> None:
        self._store = store

    async def find(self, nick: str) -> Account | None:
        return self._store.lookup(nick)

    async def add(self, nick: str, password_hash: str) -> None:
        self._store.add(nick, password_hash)

    async def set_hash(self, nick: str, password_hash: str) -> None:
        self._store.set_hash(nick, password_hash)

    async def remove(self, nick: str) -> None:
        self._store.remove(nick)

    async def nicks(self) -> list[str]:
        return self._store.nicks()


def run_account(args: argparse.Namespace, read_password: Callable[[], str] | None = None) -> int:
    read = read_password or _read_password
    if args.redis is None and (args.redis_cluster or args.redis_cafile):
        return _fail("--redis-cluster and --redis-cafile need --redis URL", EXIT_USAGE)
    if args.redis is not None:
        return trio.run(_in_redis, args, read)
    path = args.db or _default_path()
    try:
        nick = _nick(args)
        store = AccountStore(path)
    except _Usage as exc:
        return _fail(str(exc), EXIT_USAGE)
    except sqlite3.Error as exc:
        return _fail(f"cannot open {path}: {exc}", EXIT_FAILED)
    try:
        return trio.run(_act, _FileBook(store), args.action, nick, read)
    except _Usage as exc:
        return _fail(str(exc), EXIT_USAGE)
    except AccountError as exc:
        return _fail(str(exc), EXIT_FAILED)
    except sqlite3.Error as exc:
        return _fail(f"{path}: {exc}", EXIT_FAILED)
    finally:
        store.close()


async def _in_redis(args: argparse.Namespace, read_password: Callable[[], str]) -> int:
    from triochat.server.redis_accounts import RedisAccounts
    from triochat.server.redis_bus import Bus

    try:
        nick = _nick(args)
        bus = await Bus.connect(
            parse_redis_url(args.redis), cluster=args.redis_cluster, cafile=args.redis_cafile
        )
    except _Usage as exc:
        return _fail(str(exc), EXIT_USAGE)
    except RedisError as exc:
        return _fail(str(exc), EXIT_FAILED)
    try:
        return await _act(RedisAccounts(bus), args.action, nick, read_password)
    except _Usage as exc:
        return _fail(str(exc), EXIT_USAGE)
    except AccountError as exc:
        return _fail(str(exc), EXIT_FAILED)
    finally:
        await bus.close()


async def _act(book: Book, action: str, nick: str, read_password: Callable[[], str]) -> int:
    if action == "list":
        for registered in await book.nicks():
            print(registered)
        return 0
    if action == "remove":
        await book.remove(nick)
        print(f"{nick}: removed")
        return 0
    # Checked before the password is asked for (and checked again by the write).
    if action == "passwd" and await book.find(nick) is None:
        raise NoSuchAccount(f"{nick}: no such account")
    if action == "add" and await book.find(nick) is not None:
        raise AccountExists(f"{nick}: already registered")
    password_hash = hash_password(_password(read_password))
    if action == "add":
        await book.add(nick, password_hash)
        print(f"{nick}: registered")
    else:
        await book.set_hash(nick, password_hash)
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
