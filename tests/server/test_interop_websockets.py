"""Interop: a client written from docs/protocol.md alone, on another stack.

The clients here use the ``websockets`` package on asyncio (in a worker thread, while
the server runs in the trio test) and parse with the stdlib ``json`` module, never
with triochat's codec: they see exactly what any third-party client would.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import trio
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from triochat.server import Server

ACROSS_NODES = True

TIMEOUT = 10


class Peer:
    """One WebSocket client: NDJSON lines in text messages, split on newlines."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.pending: list[dict[str, Any]] = []

    async def send(self, *events: dict[str, Any]) -> None:
        """Several events may share one message, one line each; the last newline is optional."""
        await self.ws.send("\n".join(json.dumps(event) for event in events))

    async def receive(self) -> dict[str, Any]:
        while not self.pending:
            message = await self.ws.recv()
            assert isinstance(message, str), "servers send text messages only"
            self.pending = [json.loads(line) for line in message.split("\n") if line.strip()]
        return self.pending.pop(0)

    async def expect(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = await self.receive()
        assert event["type"] == kind, event
        for name, value in fields.items():
            assert event[name] == value, event
        return event

    async def skip_until(self, kind: str, **fields: Any) -> dict[str, Any]:
        while True:
            event = await self.receive()
            if event["type"] == kind and all(event.get(k) == v for k, v in fields.items()):
                return event

    async def hello(self, nick: str, **extra: Any) -> dict[str, Any]:
        """hello; then welcome, and per room: joined, history, members."""
        await self.send({"type": "hello", "nick": nick, **extra})
        welcome = await self.expect("welcome", nick=nick)
        for room in welcome["rooms"]:
            await self.expect("joined", room=room, nick=nick)
            await self.expect("history", room=room)
            await self.expect("members", room=room)
        return welcome


async def _chat(url: str) -> None:
    async with connect(url) as ws_ada, connect(url) as ws_bob:
        ada, bob = Peer(ws_ada), Peer(ws_bob)
        welcome = await ada.hello("ada")
        assert welcome["rooms"] == ["lobby"]
        assert welcome["limits"]["max_line"] == 65536
        await bob.hello("bob")
        await ada.expect("joined", room="lobby", nick="bob")

        await bob.send({"type": "say", "room": "lobby", "text": "hi from asyncio", "id": "b1"})
        # The sender gets its own message, then the ack (sent once the message is saved).
        mine = await bob.expect("message", text="hi from asyncio", id="b1")
        await bob.expect("ack", id="b1", room="lobby", seq=mine["seq"])
        theirs = await ada.expect("message", seq=mine["seq"], text="hi from asyncio")
        assert mine == theirs
        assert theirs["from"] == "bob"
        assert isinstance(theirs["ts"], float)

        # Two events in one message; answers come in order.
        await ada.send({"type": "ping", "token": 1}, {"type": "who", "room": "lobby"})
        await ada.expect("pong", token=1)
        await ada.expect("members", room="lobby", nicks=["ada", "bob"])

        # The server answers WebSocket Pings (its own keepalive uses them too).
        await asyncio.wait_for(await ws_ada.ping(), TIMEOUT)

        await bob.send({"type": "quit"})
        assert await _close_code(bob) == 1000
        await ada.expect("left", room="lobby", nick="bob", reason="quit")


async def _close_code(peer: Peer) -> int:
    """Read to the close; only the quitter's own ``left`` may come first (durable history
    holds it until saved, by which time the session is gone: clients must not rely on it)."""
    try:
        while True:
            event = await peer.receive()
            assert (event["type"], event["reason"]) == ("left", "quit"), event
    except ConnectionClosed as closed:
        received = closed.rcvd
    assert received is not None, "the server dropped the connection without a close frame"
    return received.code


async def _errors_and_resume(url: str) -> None:
    async with connect(url) as ws:
        peer = Peer(ws)
        await peer.send({"type": "say", "room": "lobby", "text": "too early"})
        await peer.expect("error", code="hello_first")
        await peer.hello("cy", rooms=["Dev"])
        await peer.send({"type": "say", "room": "dev", "text": "one", "id": 1})
        first = await peer.skip_until("ack", id=1)
        await peer.send({"type": "say", "room": "dev", "text": "two", "id": 2})
        await peer.skip_until("ack", id=2)
        await peer.ws.send(b"binary is not part of the protocol")
        await peer.skip_until("error", code="bad_event")
    async with connect(url) as ws:
        peer = Peer(ws)
        await peer.send({"type": "hello", "nick": "cy", "resume": {"dev": first["seq"]}})
        await peer.expect("welcome", rooms=["dev"])
        joined = await peer.expect("joined", room="dev", nick="cy")
        page = await peer.expect("history", room="dev")
        seqs = [event["seq"] for event in page["events"]]
        assert seqs == list(range(first["seq"] + 1, joined["seq"]))
        assert page["events"][0]["text"] == "two"


def _run(scenario: Any, url: str) -> None:
    asyncio.run(asyncio.wait_for(scenario(url), TIMEOUT))


async def test_websockets_clients_chat_by_the_documented_protocol(server: Server) -> None:
    with trio.fail_after(TIMEOUT + 5):
        await trio.to_thread.run_sync(_run, _chat, server.url("ws"))


async def test_websockets_client_errors_and_resume(server: Server) -> None:
    with trio.fail_after(TIMEOUT + 5):
        await trio.to_thread.run_sync(_run, _errors_and_resume, server.url("ws"))
