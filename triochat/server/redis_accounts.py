"""Registered nicks in Redis, shared by every node (``serve --redis``; the operator's
``triochat account --redis URL``).

The same accounts as :class:`triochat.server.accounts.AccountStore` keeps in one
server's file, behind the same :class:`triochat.server.accounts.Accounts` seam: an
account is found by its nick's key (:func:`rules.nick_key`), so look-alike nicks are
one account. Each account is one hash (``tc:{a:K}``), written by one function, so a
registration races no other; ``tc:accounts`` lists the keys for ``list``, and is
written after the account (an account missing from it is still an account).
"""

from __future__ import annotations

import time
from typing import Any

from triochat.errors import RedisError
from triochat.protocol import rules
from triochat.server.accounts import Account, AccountExists, AccountsUnavailable, NoSuchAccount
from triochat.server.redis_bus import Bus, Call, as_text
from triochat.server.relay import tag

INDEX = "tc:accounts"


def account_key(nick: str) -> str:
    return f"tc:{{a:{tag(rules.nick_key(nick))}}}"


class RedisAccounts:
    """:class:`triochat.server.accounts.Accounts` in Redis; the ``bus`` is not closed here."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self.where = f"redis {bus.target.shown}"

    async def _call(self, function: str, nick: str, *args: str) -> Any:
        try:
            return await self._bus.call(Call(function, [account_key(nick)], list(args)))
        except RedisError as exc:
            raise AccountsUnavailable(str(exc)) from None

    async def find(self, nick: str) -> Account | None:
        registered, password_hash = await self._call("tc_account", nick)
        if registered is None or password_hash is None:
            return None
        return Account(as_text(registered), as_text(password_hash))

    async def add(self, nick: str, password_hash: str) -> None:
        if not await self._call("tc_account_add", nick, nick, password_hash, str(time.time())):
            raise AccountExists(f"{nick}: already registered")
        try:
            await self._bus.command("SADD", INDEX, account_key(nick))
        except RedisError as exc:
            raise AccountsUnavailable(str(exc)) from None

    async def set_hash(self, nick: str, password_hash: str) -> None:
        if not await self._call("tc_account_set", nick, password_hash):
            raise NoSuchAccount(f"{nick}: no such account")

    async def remove(self, nick: str) -> None:
        removed = await self._call("tc_account_del", nick)
        try:
            await self._bus.command("SREM", INDEX, account_key(nick))
        except RedisError as exc:
            raise AccountsUnavailable(str(exc)) from None
        if not removed:
            raise NoSuchAccount(f"{nick}: no such account")

    async def nicks(self) -> list[str]:
        """Every registered nick, as registered, in key order."""
        try:
            keys = sorted(as_text(k) for k in await self._bus.command("SMEMBERS", INDEX) or [])
            found = await self._bus.batch([Call("tc_account", [key], []) for key in keys])
        except RedisError as exc:
            raise AccountsUnavailable(str(exc)) from None
        return [as_text(f[0]) for f in found if not isinstance(f, Exception) and f[0] is not None]

    def close(self) -> None:
        """Nothing: the bus belongs to whoever opened it."""
