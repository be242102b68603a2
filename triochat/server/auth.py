"""Who a session speaks as: guests, passwords, tokens, and the limits on guessing.

Invariants
----------
* A registered nick (by :func:`rules.nick_key`) is used only by a session that
  proved it: its password, or a token whose ``sub`` is that nick. This holds for
  ``hello`` (resumed or not), for ``nick`` changes and for ``register``.
* ``--auth required``: every session proves a nick; no guest gets in.
* Passwords travel only over TLS, or from loopback (``loopback_is_secure``), or
  where the operator said so (``--allow-insecure-auth``).
* A failed login takes a token from its address's bucket and from its
  account's; while either is empty, logins for that account or from that
  address are refused before any password is checked (the right one included).
* Hashes are computed in worker threads, at most ``auth_threads`` at once: a
  login flood waits for threads, it never stalls the event loop or exhausts them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import jwt
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from triochat.protocol import ErrorCode, ProtocolError, rules
from triochat.server.accounts import (
    Account,
    AccountExists,
    Accounts,
    AccountsUnavailable,
    check_password,
    hash_password,
    verify_password,
)
from triochat.server.config import ServerConfig
from triochat.server.ratelimit import TokenBucket

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Identity:
    """What a session proved at ``hello`` (or by ``register``)."""

    nick: str
    account: str | None = None
    """The :func:`rules.nick_key` it proved (password or token); None: a guest."""
    rooms: frozenset[str] | None = None
    """The rooms a token allows, by room key (look-alikes are one room); None: any."""

    def owns(self, nick: str) -> bool:
        return self.account is not None and self.account == rules.nick_key(nick)

    def may_join(self, room: str) -> bool:
        return self.rooms is None or rules.room_key(room) in self.rooms


class FailureLimits:
    """Token buckets of failed logins, one per address and one per account.

    A bucket exists only while it is refilling: full ones are forgotten (at
    most once per refill time), so failures leave nothing behind for long.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self._rate, self._burst = rate, burst
        self._buckets: dict[str, TokenBucket] = {}
        self._refill_s = burst / rate if rate > 0 else math.inf
        self._next_sweep = -math.inf

    def __len__(self) -> int:
        return len(self._buckets)

    def wait(self, keys: list[str], now: float) -> float:
        """Seconds until every bucket of ``keys`` has a token (0: an attempt may go)."""
        buckets = [self._buckets[k] for k in keys if k in self._buckets]
        return max((b.wait(now) for b in buckets), default=0.0)

    def failed(self, keys: list[str], now: float) -> None:
        self._sweep(now)
        for key in keys:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = TokenBucket(self._rate, self._burst, now)
            bucket.take(now)

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + self._refill_s
        for key in [k for k, b in self._buckets.items() if b.full(now)]:
            del self._buckets[key]


class TokenVerifier:
    """Checks ``hello{token}``: one algorithm per configured key, named explicitly.

    The token's header picks the key (HS256: the secret; RS256 or EdDSA: the
    public key, by its type) and ``jwt.decode`` is given that one algorithm, so
    ``alg: none`` and one key type passed off as another are refused.
    """

    def __init__(self, secret: bytes | None = None, public_pem: bytes | None = None) -> None:
        self._keys: dict[str, Any] = {}
        if secret is not None:
            self._keys["HS256"] = secret
        if public_pem is not None:
            self._keys[_public_algorithm(public_pem)] = load_pem_public_key(public_pem)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims; ``token_expired`` or ``token_invalid`` if it cannot be trusted."""
        try:
            alg = jwt.get_unverified_header(token).get("alg")
        except jwt.InvalidTokenError:
            raise ProtocolError(ErrorCode.TOKEN_INVALID, "the token is not a JWT") from None
        key = self._keys.get(alg) if isinstance(alg, str) else None
        if key is None or not isinstance(alg, str):
            raise ProtocolError(
                ErrorCode.TOKEN_INVALID, f"tokens signed with {alg!r} are not accepted here"
            )
        try:
            return jwt.decode(token, key, algorithms=[alg], options={"require": ["sub"]})
        except jwt.ExpiredSignatureError:
            raise ProtocolError(ErrorCode.TOKEN_EXPIRED, "the token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise ProtocolError(ErrorCode.TOKEN_INVALID, f"the token is not valid: {exc}") from None


def _public_algorithm(pem: bytes) -> str:
    """RS256 for an RSA key, EdDSA for Ed25519; :class:`ValueError` for anything else."""
    key = load_pem_public_key(pem)
    if isinstance(key, RSAPublicKey):
        return "RS256"
    if isinstance(key, Ed25519PublicKey):
        return "EdDSA"
    raise ValueError("the JWT public key must be an RSA or Ed25519 key")


def load_public_key(pem: bytes) -> bytes:
    """``pem`` if it is a usable JWT public key, else :class:`ValueError` saying why."""
    try:
        _public_algorithm(pem)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a PEM public key: {exc}") from None
    return pem


class Guard:
    """The server's one authority on identities; sessions ask it, it never calls them."""

    def __init__(self, config: ServerConfig, accounts: Accounts) -> None:
        self._config = config
        self.accounts = accounts
        self._limiter = trio.CapacityLimiter(config.auth_threads)
        self.failures = FailureLimits(config.auth_fail_rate, config.auth_fail_burst)
        self._tokens = TokenVerifier(config.jwt_secret, config.jwt_public_key)

    # --- hello ------------------------------------------------------------------------

    async def admit(
        self, nick: str, password: str | None, token: str | None, peer: Peer
    ) -> Identity:
        """The identity ``hello`` earns, else the :class:`ProtocolError` that refuses it."""
        if token is not None:
            return await self._by_token(nick, token)
        if password is not None:
            return await self._by_password(nick, password, peer)
        if self._config.auth == "required":
            raise ProtocolError(
                ErrorCode.AUTH_REQUIRED, "this server requires a password or a token"
            )
        if await self.registered(nick) is not None:
            raise ProtocolError(
                ErrorCode.AUTH_REQUIRED, f"{nick} is registered: log in with its password"
            )
        return Identity(nick)

    async def check_rename(self, identity: Identity, nick: str) -> None:
        """Refuse (``auth_required``) a ``nick`` change to a nick the session has not proved."""
        if identity.owns(nick):
            return
        if self._config.auth == "required":
            raise ProtocolError(
                ErrorCode.AUTH_REQUIRED, "this server requires a proved nick: you cannot change it"
            )
        if await self.registered(nick) is not None:
            raise ProtocolError(ErrorCode.AUTH_REQUIRED, f"{nick} is registered to someone else")

    async def registered(self, nick: str) -> Account | None:
        """The account of ``nick``, read now (never cached); fails closed if unreadable."""
        try:
            return await self.accounts.find(nick)
        except AccountsUnavailable as exc:
            log.warning("cannot read accounts from %s: %s", self.accounts.where, exc)
            raise ProtocolError(
                ErrorCode.AUTH_REQUIRED, "accounts cannot be read now; try again later"
            ) from None

    async def _by_password(self, nick: str, password: str, peer: Peer) -> Identity:
        peer.check_secure()
        keys = [f"address {peer.host}", f"account {rules.nick_key(nick)}"]
        wait = self.failures.wait(keys, trio.current_time())
        if wait > 0:
            raise ProtocolError(
                ErrorCode.AUTH_RATE_LIMITED,
                f"too many failed logins for {nick} or from your address; try again in"
                f" {math.ceil(wait)} s",
            )
        account = await self.registered(nick)
        stored = account.hash if account is not None else None
        if stored is not None and await self._hashing(verify_password, password, stored):
            assert account is not None
            return Identity(account.nick, rules.nick_key(account.nick))
        self.failures.failed(keys, trio.current_time())
        if account is None:
            raise ProtocolError(ErrorCode.AUTH_FAILED, f"{nick} is not registered")
        raise ProtocolError(ErrorCode.AUTH_FAILED, f"wrong password for {nick}")

    async def _by_token(self, nick: str, token: str) -> Identity:
        if not self._tokens:
            raise ProtocolError(ErrorCode.TOKEN_INVALID, "this server accepts no tokens")
        claims = await self._hashing(self._tokens.verify, token)
        sub = claims.get("sub")
        try:
            rules.check_nick(sub if isinstance(sub, str) else "")
        except ProtocolError:
            raise ProtocolError(ErrorCode.TOKEN_INVALID, "the token's sub is not a nick") from None
        assert isinstance(sub, str)
        if rules.nick_key(sub) != rules.nick_key(nick):
            raise ProtocolError(ErrorCode.TOKEN_INVALID, f"the token is for {sub}, not {nick}")
        return Identity(sub, rules.nick_key(sub), _rooms_claim(claims))

    # --- register ----------------------------------------------------------------------

    async def register(self, identity: Identity, nick: str, password: str, peer: Peer) -> Identity:
        """Register ``nick`` (the session's current one) with ``password``; the new identity."""
        peer.check_secure()
        try:
            check_password(password)
        except ValueError as exc:
            raise ProtocolError(ErrorCode.BAD_EVENT, str(exc)) from None
        if await self.registered(nick) is not None:
            raise ProtocolError(ErrorCode.NICK_TAKEN, f"{nick} is already registered")
        password_hash = await self._hashing(hash_password, password)
        try:
            await self.accounts.add(nick, password_hash)
        except AccountExists as exc:  # registered meanwhile
            raise ProtocolError(ErrorCode.NICK_TAKEN, str(exc)) from None
        except AccountsUnavailable as exc:
            log.warning("cannot register %s in %s: %s", nick, self.accounts.where, exc)
            raise ProtocolError(ErrorCode.BAD_EVENT, "cannot register now; try later") from None
        return Identity(nick, rules.nick_key(nick), identity.rooms)

    async def _hashing(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a worker thread, at most ``auth_threads`` at once."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def close(self) -> None:
        self.accounts.close()


@dataclass(frozen=True)
class Peer:
    """What the guard needs to know of a connection to judge a password."""

    host: str
    """The client's address (a trusted proxy's client, not the proxy)."""
    secure: bool
    """A password may cross this connection (TLS, loopback, or the operator allows it)."""

    def check_secure(self) -> None:
        if not self.secure:
            raise ProtocolError(
                ErrorCode.INSECURE_AUTH,
                "passwords are only accepted over TLS (wss:// or tls://): this connection is"
                " plaintext and not from this machine; the operator may allow it with"
                " --allow-insecure-auth",
            )


def _rooms_claim(claims: dict[str, Any]) -> frozenset[str] | None:
    """The room keys of a ``rooms`` claim; ``token_invalid`` if it is not a list of rooms."""
    rooms = claims.get("rooms")
    if rooms is None:
        return None
    if not isinstance(rooms, list) or not all(isinstance(r, str) for r in rooms):
        raise ProtocolError(
            ErrorCode.TOKEN_INVALID, "the token's rooms claim is not a list of rooms"
        )
    try:
        return frozenset(rules.room_key(rules.check_room(room)) for room in rooms)
    except ProtocolError:
        raise ProtocolError(
            ErrorCode.TOKEN_INVALID, "the token's rooms claim names an invalid room"
        ) from None
