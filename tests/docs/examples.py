"""The example sessions of docs/protocol.md section 14, played against a live server.

Each script below says which client sends which line; :func:`transcript` plays it
against an in-process server (history in memory, every other setting at its
default, so ``welcome.limits`` shows the defaults) over raw sockets, and renders
the exact wire lines in the doc's format::

    ada → {"type":"hello",...}            a line the client sent
    ada ← {"type":"welcome",...}          a line it received
    cy  ⇐ {"type":"welcome",...}          WebSocket: one message from the server,
          {"type":"joined",...}           its further lines indented
          (the server closes bob's connection)          what happened
    dee   closed by the server with code 1000

Between steps the runner waits without sleeping: every client still connected
sends a ``ping`` whose ``pong`` (left out of the transcript) marks the end of what
that step sent it, the acting client first; a client that drops waits for its
``left`` to reach the others first, as that is not ordered by a ping.

``tests/docs/test_examples.py`` compares the rendering with the blocks in the doc,
ignoring timestamps, ``server_id`` and (on WebSocket) how lines were grouped into
messages, which depends on timing. To rewrite the blocks from a fresh run::

    .venv/bin/python -m tests.docs.examples --write
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import trio
import trio_websocket

from triochat.client import parse_url
from triochat.server import Server, ServerConfig, serve

Transport = Literal["tcp", "ws"]
TRANSPORTS: tuple[Transport, ...] = ("tcp", "ws")
DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
CONFIG = ServerConfig(host="127.0.0.1", port=0, tcp_port=0)
"""Defaults but the ports, as ``triochat serve --port 0 --tcp-port 0 --no-history``."""
TIMEOUT = 10.0
"""Seconds one whole script may take (it takes a fraction of one)."""


# --- the scripts ---------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """``who`` sends ``lines`` (one WebSocket message); connects first if it is not connected."""

    who: str
    lines: tuple[str, ...]
    note: str = ""
    """Printed after the (first) line sent, e.g. ``(a new connection)``."""


@dataclass(frozen=True)
class Quit:
    """``who`` sends ``quit`` and reads until the server closes the connection."""

    who: str
    line: str


@dataclass(frozen=True)
class Drop:
    """``who`` closes its connection without ``quit``; the others wait for its ``left``."""

    who: str
    note: str


@dataclass(frozen=True)
class Stop:
    """The server is stopped; every client reads until it is closed."""

    note: str


Step = Send | Quit | Drop | Stop


def send(who: str, *lines: str, note: str = "") -> Send:
    return Send(who, lines, note)


TCP_SCRIPT: list[Step] = [
    send("ada", '{"type":"hello","nick":"ada","rooms":["lobby","dev"]}'),
    send("bob", '{"type":"hello","nick":"bob"}'),
    send("bob", '{"type":"say","room":"lobby","text":"hi ada","id":"m1"}'),
    send("ada", '{"type":"dm","to":"bob","text":"psst"}'),
    send("ada", '{"type":"nick","nick":"Ada"}'),
    send("ada", '{"type":"who"}'),
    send("ada", '{"type":"who","room":"dev"}'),
    send("ada", '{"type":"history","room":"lobby","before_seq":3,"limit":10}'),
    send("ada", '{"type":"ping","token":7}'),
    send("ada", '{"type":"say","room":"nowhere","text":"x","id":9}'),
    send("ada", "not json"),
    Quit("bob", '{"type":"quit"}'),
    send("bob", '{"type":"hello","nick":"bob","resume":{"lobby":3}}', note="(a new connection)"),
    Drop("bob", "(bob closes the socket without quit)"),
]

WS_SCRIPT: list[Step] = [
    send("cy", '{"type":"hello","nick":"cy","rooms":["Dev"]}'),
    send("dee", '{"type":"hello","nick":"dee","rooms":["dev"]}'),
    send("dee", '{"type":"say","room":"dev","text":"hello, cy","id":1}'),
    send("cy", '{"type":"say","room":"dev","text":"waves","id":2,"action":true}'),
    send("dee", '{"type":"topic","room":"dev","text":"release on friday"}'),
    send("cy", '{"type":"ping","token":"t1"}', '{"type":"who","room":"dev"}'),
    send("cy", '{"type":"list","limit":10}'),
    Quit("dee", '{"type":"quit","reason":"bye"}'),
    Stop("(the server is stopped with Ctrl-C)"),
]

SCRIPTS: dict[Transport, list[Step]] = {"tcp": TCP_SCRIPT, "ws": WS_SCRIPT}
ARROWS: dict[Transport, tuple[str, str]] = {"tcp": ("→", "←"), "ws": ("⇒", "⇐")}
"""(sent, received) per transport."""


# --- raw clients -----------------------------------------------------------------


class Closed(Exception):
    """The server closed the connection; ``code`` is the WebSocket close code, if any."""

    def __init__(self, code: int | None = None) -> None:
        super().__init__(code)
        self.code = code


class Peer:
    """One client connection that sends and receives exact wire lines."""

    async def send(self, lines: tuple[str, ...]) -> None:
        raise NotImplementedError

    async def receive(self) -> list[str]:
        """The lines of the next message (TCP: of the next read); :class:`Closed` at the end."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class TcpPeer(Peer):
    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def send(self, lines: tuple[str, ...]) -> None:
        await self._stream.send_all("".join(f"{line}\n" for line in lines).encode())

    async def receive(self) -> list[str]:
        while b"\n" not in self._buffer:
            data = await self._stream.receive_some()
            if not data:
                assert not self._buffer, f"the server closed mid-line: {self._buffer!r}"
                raise Closed
            self._buffer += data
        complete, _, self._buffer = self._buffer.rpartition(b"\n")
        return complete.decode().split("\n")

    async def close(self) -> None:
        await self._stream.aclose()


class WsPeer(Peer):
    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self._ws = ws

    async def send(self, lines: tuple[str, ...]) -> None:
        await self._ws.send_message("\n".join(lines))

    async def receive(self) -> list[str]:
        try:
            message = await self._ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            raise Closed(exc.reason.code if exc.reason else None) from None
        assert isinstance(message, str), f"a binary message: {message!r}"
        assert message.endswith("\n"), f"a server message ends with a newline: {message!r}"
        return message[:-1].split("\n")

    async def close(self) -> None:
        await self._ws.aclose()


# --- playing a script --------------------------------------------------------------


class Player:
    """Plays one script against ``server`` and records the transcript's lines."""

    def __init__(self, server: Server, transport: Transport, nursery: trio.Nursery) -> None:
        self._server = server
        self._transport = transport
        self._nursery = nursery
        self._peers: dict[str, Peer] = {}
        self._width = max(len(s.who) for s in SCRIPTS[transport] if not isinstance(s, Stop))
        self._barriers = 0
        self._limits_shown = False
        self.lines: list[str] = []

    async def play(self, script: list[Step]) -> list[str]:
        try:
            for step in script:
                await self._step(step)
        finally:
            for peer in self._peers.values():
                with trio.CancelScope(shield=True):
                    await peer.close()
        return self.lines

    async def _step(self, step: Step) -> None:
        sent, _ = ARROWS[self._transport]
        match step:
            case Send(who=who, lines=lines, note=note):
                if who not in self._peers:
                    self._peers[who] = await self._connect()
                await self._peers[who].send(lines)
                self._message(who, sent, lines, note)
                await self._settle(first=who)
            case Quit(who=who, line=line):
                await self._peers[who].send((line,))
                self._message(who, sent, (line,))
                await self._read_to_close(who)
                await self._settle()
            case Drop(who=who, note=note):
                self._note(note)
                await self._peers.pop(who).close()
                for other in self._peers:
                    await self._barrier(other, until=f'"nick":"{who}","reason":"disconnected"')
                await self._settle()
            case Stop(note=note):
                self._note(note)
                self._server.stop()
                for who in list(self._peers):
                    await self._read_to_close(who)

    async def _connect(self) -> Peer:
        address = parse_url(self._server.url(self._transport))
        if self._transport == "tcp":
            return TcpPeer(await trio.open_tcp_stream(address.host, address.port))
        ws = await trio_websocket.connect_websocket_url(self._nursery, self._server.url("ws"))
        return WsPeer(ws)

    async def _settle(self, first: str | None = None) -> None:
        """Every connected client, ``first`` first, has everything the step sent it."""
        order = sorted(self._peers, key=lambda who: who != first)
        for who in order:
            await self._barrier(who)

    async def _barrier(self, who: str, until: str | None = None) -> None:
        """Record what ``who`` receives up to the ``pong`` of a ping sent now.

        With ``until``, first read up to a line containing it (something the
        server does on its own time, such as noticing a dropped connection).
        """
        peer = self._peers[who]
        while until is not None:
            lines = await peer.receive()
            self._received(who, lines)
            if any(until in line for line in lines):
                until = None
        self._barriers += 1
        pong = f'{{"type":"pong","token":"sync-{self._barriers}"}}'
        await peer.send((f'{{"type":"ping","token":"sync-{self._barriers}"}}',))
        while True:
            lines = await peer.receive()
            if pong in lines:
                assert lines[-1] == pong, f"{who} got lines after its sync pong: {lines}"
                self._received(who, lines[:-1])
                return
            self._received(who, lines)

    async def _read_to_close(self, who: str) -> None:
        peer = self._peers.pop(who)
        try:
            while True:
                self._received(who, await peer.receive())
        except Closed as closed:
            if self._transport == "tcp":
                self._note(f"(the server closes {who}'s connection)")
            else:
                self.lines.append(
                    f"{who:<{self._width}}   closed by the server with code {closed.code}"
                )
        await peer.close()

    # --- rendering ---------------------------------------------------------------

    def _received(self, who: str, lines: list[str]) -> None:
        if not lines:
            return
        _, arrow = ARROWS[self._transport]
        if self._transport == "tcp":  # a TCP read has no boundaries worth showing
            for line in lines:
                self._message(who, arrow, (self._limits(line),))
        else:
            self._message(who, arrow, tuple(self._limits(line) for line in lines))

    def _limits(self, line: str) -> str:
        """Each transcript shows ``welcome.limits`` once in full, then as ``{…}``."""
        if '"type":"welcome"' not in line:
            return line
        if not self._limits_shown:
            self._limits_shown = True
            return line
        return re.sub(r'"limits":\{[^{}]*\}', '"limits":{…}', line)

    def _message(self, who: str, arrow: str, lines: tuple[str, ...], note: str = "") -> None:
        first = f"{who:<{self._width}} {arrow} {lines[0]}"
        self.lines.append(f"{first}          {note}" if note else first)
        self.lines.extend(" " * (self._width + 3) + line for line in lines[1:])

    def _note(self, note: str) -> None:
        self.lines.append(" " * (self._width + 3) + note)


async def transcript(transport: Transport) -> list[str]:
    """Play ``transport``'s script against a fresh server; the transcript's lines."""
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(serve, CONFIG)
            try:
                return await Player(server, transport, nursery).play(SCRIPTS[transport])
            finally:
                server.stop()


# --- the doc's blocks ------------------------------------------------------------------

MARKER = "<!-- example session: {transport}."
BLOCK = re.compile(r"```\n(.*?)```\n", re.DOTALL)


def doc_block(text: str, transport: Transport) -> tuple[int, int]:
    """Where the code block after ``transport``'s marker starts and ends (its content)."""
    at = text.index(MARKER.format(transport=transport))
    found = BLOCK.search(text, at)
    assert found is not None, f"no code block after the {transport} marker"
    return found.start(1), found.end(1)


def read_block(transport: Transport, doc: Path = DOC) -> list[str]:
    text = doc.read_text(encoding="utf-8")
    start, end = doc_block(text, transport)
    return text[start:end].splitlines()


def write_block(transport: Transport, lines: list[str], doc: Path = DOC) -> None:
    text = doc.read_text(encoding="utf-8")
    start, end = doc_block(text, transport)
    doc.write_text(text[:start] + "".join(f"{line}\n" for line in lines) + text[end:], "utf-8")


LINE = re.compile(r"^(?P<who>\S+) +(?P<arrow>[→←⇒⇐]) (?P<rest>.*)$")
VOLATILE = [
    (re.compile(r'"ts":-?[0-9][0-9.e+-]*'), '"ts":<number>'),
    (re.compile(r'"server_id":"[^"]*"'), '"server_id":"<id>"'),
]


def normalise(lines: list[str]) -> list[tuple[str, str, str]]:
    """``(who, arrow, text)`` per wire line, volatile values replaced.

    A message's further lines take its sender and arrow, so one WebSocket message of
    three lines and three messages of one line each come out the same. Notes keep
    ``who`` and ``arrow`` empty.
    """
    entries: list[tuple[str, str, str]] = []
    who = arrow = ""
    for raw in lines:
        line = raw.rstrip()
        for pattern, replacement in VOLATILE:
            line = pattern.sub(replacement, line)
        found = LINE.match(line)
        if found:
            who, arrow = found["who"], found["arrow"]
            entries.append((who, arrow, found["rest"]))
        elif line.startswith(" ") and line.lstrip().startswith("{"):
            assert who, f"a continuation line with no message before it: {raw!r}"
            entries.append((who, arrow, line.lstrip()))
        else:
            who = arrow = ""
            entries.append(("", "", line.strip()))
    return entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.docs.examples", description=__doc__.split("\n", 1)[0]
    )
    parser.add_argument("--write", action="store_true", help=f"rewrite the blocks in {DOC}")
    args = parser.parse_args(argv)
    for transport in TRANSPORTS:
        lines = trio.run(transcript, transport)
        if args.write:
            write_block(transport, lines)
            print(f"rewrote the {transport} example in {DOC}")
        else:
            print("\n".join(lines), end="\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
