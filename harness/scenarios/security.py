"""``security``: what nobody may do is refused with its code, and everyone else chats on.

While the members exchange counted traffic (in ``--workers`` shards, with plain
``ws://`` or ``tcp://`` targets; the attacker stays in this process):

- a browser on a foreign web page opens a WebSocket (``Origin: https://evil.example``)
  and gets ``403`` before the upgrade (WebSocket targets only: the TCP port has no
  Origin);
- an owner registers a fresh nick (``register{password}``) and leaves;
- a guest that takes the registered nick gets ``auth_required``; one that guesses
  the password wrong gets ``auth_failed``;
- the owner comes back with the right password and is welcomed.

Registering needs a loopback peer or TLS unless the server allows plaintext
passwords; against a server that refuses it (``insecure_auth``) the account
checks say so instead of passing.
"""

from __future__ import annotations

import base64
import os
import secrets

import trio

from harness import sharded
from harness.context import Context
from harness.fleet import Fleet
from harness.model import ScenarioResult
from harness.swarm import lean_url
from harness.traffic import (
    connect_check,
    delivery_checks,
    open_members,
    outcome_checks,
    run_phase,
)
from harness.trust import CAFILE, open_client
from triochat.client import Client, open_secure_stream, parse_url, tls_for
from triochat.errors import ConnectError, Rejected, TriochatError
from triochat.protocol.events import Error, Notice

NAME = "security"
PROVES = (
    "a foreign Origin, a guest on a registered nick and a wrong password are refused"
    " with their codes while everyone else chats"
)
FOREIGN_ORIGIN = "https://evil.example"
PASSWORD_WORK_S = 10.0
"""The attack's answers may take this long at least (or twice ``--settle``, if longer): it
makes the server hash or check a password four times, each deliberately slow (scrypt,
docs/security.md), which a small machine under load stretches to seconds."""


async def run(ctx: Context, result: ScenarioResult) -> None:
    n = max(ctx.options.clients - 1, 2)
    async with ctx.target(NAME) as target:
        if all(lean_url(url) for url in target.urls):
            await _sharded(ctx, result, target.urls, n)
        else:
            await _in_process(ctx, result, target.urls, n)


async def _in_process(ctx: Context, result: ScenarioResult, urls: list[str], n: int) -> None:
    room = ctx.room(NAME)
    async with trio.open_nursery() as nursery:
        fleet = Fleet(nursery, urls)
        sims = await open_members(ctx, fleet, NAME, room, n)
        if connect_check(result, sims):
            attempts: dict[str, str] = {}
            async with trio.open_nursery() as attackers:
                attackers.start_soon(_attack, ctx, urls, room, attempts)
                phase = await run_phase(
                    ctx, NAME, "", room, sims, sims, ctx.options.fault_messages()
                )
            _check_origin(result, urls, attempts)
            _check_accounts(result, attempts)
            delivery_checks(result, phase, "every member")
        await fleet.close(notes=result.notes)


async def _sharded(ctx: Context, result: ScenarioResult, urls: list[str], n: int) -> None:
    """The members in ``--workers`` shards; the attacker stays in this process."""
    room = ctx.room(NAME)
    attempts: dict[str, str] = {}

    def start(nursery: trio.Nursery, _: sharded.Members) -> None:
        nursery.start_soon(_attack, ctx, urls, room, attempts)

    outcome = await sharded.phase_beside(ctx, result, NAME, urls, n, room, start)
    if outcome is not None:
        _check_origin(result, urls, attempts)
        _check_accounts(result, attempts)
        outcome_checks(result, "", outcome, "every member")


async def _attack(ctx: Context, urls: list[str], room: str, seen: dict[str, str]) -> None:
    """Fill ``seen`` with what each attempt got (a status, a code, or what went wrong)."""
    within = max(2 * ctx.options.settle, PASSWORD_WORK_S)
    ws = next((url for url in urls if url.startswith(("ws://", "wss://"))), None)
    with trio.move_on_after(within):
        if ws is not None:
            seen["origin"] = await _foreign_handshake(ws)
        await _accounts(ctx, urls[0], room, seen)


async def _foreign_handshake(url: str) -> str:
    """The status line a browser-style upgrade from a foreign page gets."""
    address = parse_url(url)
    request = (
        f"GET / HTTP/1.1\r\nHost: {address.hostport}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
        f"Sec-WebSocket-Version: 13\r\nOrigin: {FOREIGN_ORIGIN}\r\n\r\n"
    ).encode()
    try:
        stream = await open_secure_stream(address, tls_for(address, CAFILE.get()))
    except ConnectError as exc:
        return str(exc)
    async with stream:
        await stream.send_all(request)
        head = b""
        while b"\r\n" not in head:
            data = await stream.receive_some(4096)
            if not data:
                break
            head += data
    return head.partition(b"\r\n")[0].decode(errors="replace")


async def _accounts(ctx: Context, url: str, room: str, seen: dict[str, str]) -> None:
    nick = ctx.nick(NAME, "owner")
    password = ctx.options.password or secrets.token_urlsafe(16)
    seen["register"] = await _register(url, nick, room, password)
    if seen["register"] != "registered":
        return
    seen["guest"] = await _hello(url, nick, room, None)
    seen["wrong"] = await _hello(url, nick, room, password + "-wrong")
    seen["owner"] = await _hello(url, nick, room, password)


async def _register(url: str, nick: str, room: str, password: str) -> str:
    """``registered``, or the code or failure the owner met instead."""
    answer = "closed before an answer"
    try:
        async with open_client(url, nick, rooms=[room]) as owner:
            await owner.register(password)
            async for event in owner:
                if isinstance(event, Notice) and event.code == "registered":
                    answer = "registered"
                    break
                if isinstance(event, Error):
                    answer = event.code
                    break
            await _quit(owner)
    except TriochatError as exc:
        return str(exc)
    return answer


async def _hello(url: str, nick: str, room: str, password: str | None) -> str:
    """``welcome``, or the code the hello was refused with."""
    try:
        async with open_client(url, nick, rooms=[room], password=password) as client:
            await _quit(client)
            return "welcome"
    except Rejected as exc:
        return exc.code
    except TriochatError as exc:
        return str(exc)


async def _quit(client: Client) -> None:
    """Leave as every harness client does: ``quit``, then read until the server closes."""
    await client.quit()
    async for _ in client:
        pass


def _check_origin(result: ScenarioResult, urls: list[str], seen: dict[str, str]) -> None:
    if not any(url.startswith(("ws://", "wss://")) for url in urls):
        result.notes.append("security: no WebSocket URL, so no Origin to check")
        return
    status = seen.get("origin", "no answer in time")
    result.check(
        "foreign origin refused",
        f"an upgrade from {FOREIGN_ORIGIN} gets 403 before the upgrade",
        status.startswith("HTTP/1.1 403"),
        status,
    )


def _check_accounts(result: ScenarioResult, seen: dict[str, str]) -> None:
    registered = seen.get("register", "no answer in time")
    if not result.check(
        "nick registered",
        "a fresh nick can be registered (loopback or TLS, or plaintext allowed)",
        registered == "registered",
        registered,
    ):
        return
    expected = {"guest": "auth_required", "wrong": "auth_failed", "owner": "welcome"}
    observed = {who: seen.get(who, "no answer in time") for who in expected}
    result.check(
        "registered nick protected",
        "a guest on it gets auth_required, a wrong password auth_failed, its owner a welcome",
        observed == expected,
        ", ".join(f"{who}: {got}" for who, got in observed.items()),
    )
