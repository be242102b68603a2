"""Registered nicks: the ``accounts`` table and its password hashes.

Invariants
----------
* An account is keyed by :func:`triochat.protocol.rules.nick_key` of its nick,
  and by nothing else: whatever makes two nicks "the same person" makes them
  the same account.
* A password is stored only as ``scrypt$N$r$p$salt$hash`` (base64 salt and
  hash, a fresh 16-byte salt per account): the cost parameters travel with
  the hash, so raising :data:`SCRYPT_N` later leaves old hashes verifiable.
* Hashes are compared with :func:`hmac.compare_digest` only.
* Nothing is cached: every login reads the table, so ``triochat account`` on a
  running server's file (SQLite WAL) takes effect at the next login.

The blocking calls here are either a primary-key read (microseconds; a WAL
reader never waits for a writer, so the server makes them on the event loop)
or a hash or a write, which the server runs in a worker thread
(:mod:`triochat.server.auth`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio

from triochat.protocol import rules

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
"""scrypt's cost (16 MiB, about 50 ms a hash): OWASP's minimum for scrypt."""
SALT_BYTES = 16
HASH_BYTES = 32
READ_TIMEOUT = 0.1
"""Seconds a lookup may wait for SQLite's lock before failing (closed: the login is refused)."""
MAX_PASSWORD = 1024
"""Longer passwords are refused: hashing cost must not be the client's to choose."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    key     TEXT PRIMARY KEY,
    nick    TEXT NOT NULL,
    hash    TEXT NOT NULL,
    created REAL NOT NULL
) WITHOUT ROWID;
"""


class AccountError(Exception):
    """An account operation that cannot be done; the message is one line for a person."""


class AccountExists(AccountError):
    pass


class NoSuchAccount(AccountError):
    pass


def check_password(password: str) -> str:
    """``password`` if it may be stored, else :class:`ValueError` saying why."""
    if not password:
        raise ValueError("the password is empty")
    if len(password) > MAX_PASSWORD:
        raise ValueError(f"a password has at most {MAX_PASSWORD} characters")
    return password


def hash_password(password: str) -> str:
    """A new salted scrypt hash of ``password``, with its parameters. Slow: use a thread."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return "$".join(
        ["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(digest)]
    )


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (constant-time compare). Slow: use a thread.

    A hash in a form this version does not know never matches.
    """
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p), len(expected))
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, size: int = HASH_BYTES) -> bytes:
    memory = 128 * r * n * p
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=2 * memory, dklen=size
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class Account:
    nick: str
    """The nick as it was registered (its key is what identifies the account)."""
    hash: str


def memory_path() -> str:
    """A private in-memory database: accounts that last as long as the server."""
    return f"file:triochat-accounts-{uuid.uuid4().hex}?mode=memory&cache=shared"


class AccountStore:
    """The ``accounts`` table of one SQLite file (or of a private in-memory database).

    ``lookup`` uses its own connection, so a write waiting for SQLite's lock
    (the history committer, the operator's command) never holds up a read; the
    server makes that read on its event loop, so it waits at most
    ``READ_TIMEOUT`` for a lock (a WAL reader normally waits for none).
    """

    def __init__(self, path: str | Path | None, *, busy_timeout: float = 5.0) -> None:
        self.path = str(path) if path is not None else memory_path()
        uri = path is None
        self._writer = sqlite3.connect(
            self.path, uri=uri, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        if not uri:
            self._writer.execute("PRAGMA journal_mode=WAL")
        self._writer.executescript(SCHEMA)
        # In memory, one connection (sqlite3 serialises its use): a second one on the
        # shared cache could meet a table lock instead of waiting for it.
        self._reader = (
            self._writer
            if uri
            else sqlite3.connect(
                self.path, timeout=READ_TIMEOUT, isolation_level=None, check_same_thread=False
            )
        )

    def lookup(self, nick: str) -> Account | None:
        """The account ``nick`` belongs to (by :func:`rules.nick_key`), if it is registered."""
        row = self._reader.execute(
            "SELECT nick, hash FROM accounts WHERE key = ?", (rules.nick_key(nick),)
        ).fetchone()
        return Account(row[0], row[1]) if row else None

    def add(self, nick: str, password_hash: str) -> None:
        """Register ``nick``; :class:`AccountExists` if it (or a nick of the same key) is."""
        try:
            self._writer.execute(
                "INSERT INTO accounts VALUES (?, ?, ?, ?)",
                (rules.nick_key(nick), nick, password_hash, time.time()),
            )
        except sqlite3.IntegrityError:
            raise AccountExists(f"{nick}: already registered") from None

    def set_hash(self, nick: str, password_hash: str) -> None:
        cursor = self._writer.execute(
            "UPDATE accounts SET hash = ? WHERE key = ?", (password_hash, rules.nick_key(nick))
        )
        if cursor.rowcount == 0:
            raise NoSuchAccount(f"{nick}: no such account")

    def remove(self, nick: str) -> None:
        cursor = self._writer.execute("DELETE FROM accounts WHERE key = ?", (rules.nick_key(nick),))
        if cursor.rowcount == 0:
            raise NoSuchAccount(f"{nick}: no such account")

    def nicks(self) -> list[str]:
        """Every registered nick, as registered, in key order."""
        return [nick for (nick,) in self._reader.execute("SELECT nick FROM accounts ORDER BY key")]

    def close(self) -> None:
        if self._reader is not self._writer:
            self._reader.close()
        self._writer.close()


class AccountsUnavailable(AccountError):
    """The accounts could not be read or written now (a locked file, Redis unreachable)."""


class Accounts(Protocol):
    """Where the server finds and registers accounts: this file's table on one server,
    Redis when nodes share rooms (:class:`triochat.server.relay.RedisAccounts`)."""

    where: str
    """Named in logs."""

    async def find(self, nick: str) -> Account | None:
        """The account ``nick`` belongs to; :class:`AccountsUnavailable` if unreadable."""
        ...

    async def add(self, nick: str, password_hash: str) -> None:
        """Register ``nick``; :class:`AccountExists`, or :class:`AccountsUnavailable`."""
        ...

    def close(self) -> None: ...


class LocalAccounts:
    """The :class:`Accounts` of an :class:`AccountStore`: a read is made on the event
    loop (a WAL read waits for no lock, and at most ``READ_TIMEOUT`` for one), a write
    on a worker thread."""

    def __init__(self, store: AccountStore) -> None:
        self.store = store
        self.where = store.path

    async def find(self, nick: str) -> Account | None:
        try:
            return self.store.lookup(nick)
        except sqlite3.Error as exc:
            raise AccountsUnavailable(str(exc)) from None

    async def add(self, nick: str, password_hash: str) -> None:
        try:
            await trio.to_thread.run_sync(self.store.add, nick, password_hash)
        except sqlite3.Error as exc:
            raise AccountsUnavailable(str(exc)) from None

    def close(self) -> None:
        self.store.close()
