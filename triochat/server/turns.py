"""Joins into large rooms take turns, so that a join storm starves nobody.

A join into a room of M members costs O(M) (its ``joined`` is queued for each
member, the joiner is sent all M nicks). Trio runs every runnable task once per
scheduling round, so when a storm makes a thousand joiners runnable together a
round costs a thousand such joins, and a newcomer to a quiet room waits for
them all: its welcome needs a few rounds. Taking turns, at most
:data:`JOINS_PER_TURN` joins into large rooms run per round (each holds its
turn into the next round); the rest wait, in arrival order, parked and costing
nothing. Joins into other rooms never wait.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Protocol

import trio

JOINS_PER_TURN = 8
"""Joins into large rooms per scheduling round, server-wide."""


class Rooms(Protocol):
    def is_large(self, room: str) -> bool: ...


class JoinTurns:
    """The turns of one server's joins into large rooms (see the module's text)."""

    def __init__(self, rooms: Rooms, per_turn: int = JOINS_PER_TURN) -> None:
        self._rooms = rooms
        self._turns = trio.Semaphore(per_turn)

    @asynccontextmanager
    async def taken(self, rooms: Sequence[str]) -> AsyncIterator[None]:
        """Join ``rooms`` inside: after a wait for a turn if any of them is large.

        The turn is kept until the next round, so that a round holds at most
        :data:`JOINS_PER_TURN` of them; trio's semaphore wakes waiters first come,
        first served.
        """
        if not any(self._rooms.is_large(room) for room in rooms):
            yield
            return
        async with self._turns:
            yield
            await trio.lowlevel.checkpoint()
