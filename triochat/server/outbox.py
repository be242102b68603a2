"""One client's bounded queue of encoded lines, and the flusher that wakes writers in bulk.

Theory of operation
-------------------
The hub puts with :meth:`Outbox.put`, which never blocks: a full outbox is
reported to the caller (who evicts the client), never waited on. The writer
takes *everything* queued with :meth:`Outbox.take_all`, so one write carries
as many events as arrived since the last one.

Batching needs one more thing: if the first event of a burst woke the writer
at once, the writer would send it alone while the readers carrying the rest of
the burst are still waiting for their turn. So an outbox that goes from empty
to non-empty does not wake its writer; it tells the :class:`Flusher`, a single
task that lets a few scheduler turns pass (each turn also polls the network,
so readers with data waiting run) and then wakes every writer with something
queued. The turns are spent once per burst by one task, not once per writer.
At idle this adds a few microseconds; under load it makes each write carry
what was in flight.
"""

from __future__ import annotations

import trio


class OutboxClosed(Exception):
    """The outbox was closed and everything in it has been taken."""


class Flusher:
    """Wakes the writers of non-empty outboxes, a few scheduler turns after the first put."""

    def __init__(self, turns: int) -> None:
        self._turns = turns
        self._dirty: list[Outbox] = []
        self._waiting = trio.lowlevel.ParkingLot()

    def mark(self, outbox: Outbox) -> None:
        if not self._dirty:
            self._waiting.unpark()
        self._dirty.append(outbox)

    async def run(self) -> None:
        while True:
            while not self._dirty:
                await self._waiting.park()
            for _ in range(self._turns):
                await trio.lowlevel.cancel_shielded_checkpoint()
            dirty, self._dirty = self._dirty, []
            for outbox in dirty:
                outbox.wake()


class Outbox:
    def __init__(self, max_events: int, max_bytes: int, flusher: Flusher | None = None) -> None:
        """Without a ``flusher`` every put wakes the writer directly."""
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._flusher = flusher
        self._lines: list[bytes] = []
        self._bytes = 0
        self._closed = False
        self._waiting = trio.lowlevel.ParkingLot()

    def __len__(self) -> int:
        return len(self._lines)

    def put(self, line: bytes, *, replay: bool = False) -> bool:
        """Queue ``line``; ``False`` if that would pass the bound (it is then dropped).

        ``replay`` lines bypass the bound (see :meth:`triochat.server.hub.Peer.deliver`).
        A closed outbox swallows lines: its client is on its way out.
        """
        if self._closed:
            return True
        lines = self._lines
        size = self._bytes + len(line)
        if not replay and (len(lines) >= self._max_events or size > self._max_bytes):
            return False
        if not lines:
            if self._flusher is None:
                self.wake()
            else:
                self._flusher.mark(self)
        lines.append(line)
        self._bytes = size
        return True

    def wake(self) -> None:
        self._waiting.unpark()

    def close(self) -> None:
        """No more puts; the writer gets what is left, then :class:`OutboxClosed`."""
        self._closed = True
        self._waiting.unpark_all()

    async def take_all(self) -> bytes:
        """Wait until woken with something queued, then take every line as one chunk."""
        while not self._lines:
            if self._closed:
                raise OutboxClosed
            await self._waiting.park()
        batch = b"".join(self._lines)
        self._lines.clear()
        self._bytes = 0
        return batch
