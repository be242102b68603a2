"""What the reference servers share: the protocol subset the load generator speaks, rooms, a CLI.

``bench.peer``, ``bench.floor`` and ``bench.wsproto_floor`` each answer a
``hello`` with one ``welcome`` and push every ``say`` to every member of its
room as a ``message`` line, built here so that all of them (and triochat)
put the same bytes on the wire for the same broadcast.
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

import trio

M = TypeVar("M")

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def welcome(nick: str, rooms: list[str]) -> str:
    return _encode({"type": "welcome", "nick": nick, "rooms": rooms}) + "\n"


def message(room: str, seq: int, nick: str, text: str, ref: object) -> str:
    """A ``message`` line as triochat sends it: the fields and order of its protocol."""
    event = {
        "type": "message",
        "room": room,
        "seq": seq,
        "from": nick,
        "text": text,
        "ts": round(time.time(), 3),
        "id": ref,
    }
    return _encode(event) + "\n"


def parse_args(description: str) -> argparse.Namespace:
    """``--host`` and ``--port``: where to listen (``--port 0`` picks a free port)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    return parser.parse_args()


class Rooms(Generic[M]):
    """Room name → its members in join order, and each room's ``seq``."""

    def __init__(self) -> None:
        self.members: defaultdict[str, list[M]] = defaultdict(list)
        self._seq: defaultdict[str, int] = defaultdict(int)

    def join(self, member: M, rooms: Iterable[str]) -> None:
        for room in rooms:
            self.members[room].append(member)

    def leave(self, member: M, rooms: Iterable[str]) -> None:
        for room in rooms:
            if member in self.members[room]:
                self.members[room].remove(member)

    def message(self, room: str, nick: str, text: str, ref: object) -> str:
        """The room's next ``message`` line, numbered here."""
        self._seq[room] += 1
        return message(room, self._seq[room], nick, text, ref)


@asynccontextmanager
async def until_signalled() -> AsyncIterator[trio.Nursery]:
    """A nursery for a trio reference server, cancelled at the first SIGINT or SIGTERM.

    The signal receiver exists before the body starts listening, so a signal sent
    right after the ``listening`` line stops the server in order.
    """
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            yield nursery
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
