"""One client's bounded queue of encoded lines, between the hub and its writer.

The hub puts with :meth:`Outbox.put`, which never blocks: a full outbox is
reported to the caller (who evicts the client), never waited on. The writer
takes *everything* queued with :meth:`Outbox.take_all`, so one write carries
as many events as arrived since the last one.
"""

from __future__ import annotations

import trio


class OutboxClosed(Exception):
    """The outbox was closed and everything in it has been taken."""


class Outbox:
    def __init__(self, max_events: int, max_bytes: int) -> None:
        self._max_events = max_events
        self._max_bytes = max_bytes
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
        if not replay and (
            len(self._lines) >= self._max_events or self._bytes + len(line) > self._max_bytes
        ):
            return False
        self._lines.append(line)
        self._bytes += len(line)
        self._waiting.unpark()
        return True

    def close(self) -> None:
        """No more puts; the writer gets what is left, then :class:`OutboxClosed`."""
        self._closed = True
        self._waiting.unpark_all()

    async def take_all(self, turns: int = 0) -> bytes:
        """Wait for at least one line, let ``turns`` scheduler turns pass, take every line.

        The turns give senders whose events are already on their way a chance to
        land them in this batch: at load this multiplies the events per write, at
        idle it costs microseconds.
        """
        while not self._lines:
            if self._closed:
                raise OutboxClosed
            await self._waiting.park()
        for _ in range(turns):
            await trio.lowlevel.cancel_shielded_checkpoint()
        batch = b"".join(self._lines)
        self._lines.clear()
        self._bytes = 0
        return batch
