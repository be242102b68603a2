"""One client's bounded queue of encoded lines, and the flusher that writes them in bulk.

Theory of operation
-------------------
The hub puts with :meth:`Outbox.put`, which never blocks: a full outbox is
reported to the caller (who evicts the client), never waited on. Whatever is
queued goes out as one write, so one write carries as many events as arrived
since the last one.

Batching needs one more thing: if the first event of a burst were written at
once, it would go alone while the readers carrying the rest of the burst are
still waiting for their turn. So an outbox that goes from empty to non-empty
tells the :class:`Flusher`, a single task that lets a few scheduler turns pass
(each turn also polls the network, so readers with data waiting run) and then
flushes every outbox with something queued. The turns are spent once per
burst by one task, not once per client.

Flushing is a write without waiting where the connection offers one (a TCP
socket we own): the common case, a socket with room in its buffer, costs one
system call and no task switch. Whatever does not fit, and everything on a
connection without such a write (WebSocket, whose framing and stream belong to
trio-websocket), is left to the client's writer task, which waits as long as
it takes. The writer is *busy* from the moment it is handed data until its
queue is empty again; while it is busy nothing else writes, so bytes never
interleave and order is the order of :meth:`Outbox.put`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NoReturn

import trio

WriteNow = Callable[[bytes], int]
"""Write what fits without waiting; return the number of bytes taken. Raises ``OSError``."""


class OutboxClosed(Exception):
    """The outbox was closed and everything in it has been taken."""


class Flusher:
    """Flushes the non-empty outboxes, a few scheduler turns after the first put."""

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
                outbox.flush()


class Outbox:
    def __init__(
        self,
        max_events: int,
        max_bytes: int,
        flusher: Flusher | None = None,
        write_now: WriteNow | None = None,
    ) -> None:
        """Without a ``flusher`` every put wakes the writer directly.

        ``write_now`` is the connection's write without waiting, if it has one.
        """
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._flusher = flusher
        self._write_now = write_now
        self._lines: list[bytes] = []
        self._events = 0
        """Events not yet written; a partly written batch is one chunk in ``_lines``."""
        self._bytes = 0
        self._busy = False
        """The writer task owns what is queued (see the module docstring)."""
        self._closed = False
        self._writer: trio.lowlevel.Task | None = None
        """The writer task while it waits for lines (one task: no ParkingLot needed)."""

    def __len__(self) -> int:
        return self._events

    def put(self, line: bytes, *, replay: bool = False) -> bool:
        """Queue ``line``; ``False`` if that would pass the bound (it is then dropped).

        ``replay`` lines bypass the bound (see :meth:`triochat.server.hub.Peer.deliver`).
        A closed outbox swallows lines: its client is on its way out.
        """
        if self._closed:
            return True
        size = self._bytes + len(line)
        if not replay and (self._events >= self._max_events or size > self._max_bytes):
            return False
        lines = self._lines
        if not lines:
            if self._flusher is None:
                self.wake()
            else:
                self._flusher.mark(self)
        lines.append(line)
        self._events += 1
        self._bytes = size
        return True

    def flush(self) -> None:
        """Write what is queued without waiting if possible; hand the rest to the writer."""
        if self._busy or self._closed or self._write_now is None or not self._lines:
            self.wake()
            return
        data = b"".join(self._lines)
        try:
            sent = self._write_now(data)
        except OSError:
            sent = 0  # the writer's own send meets the error and ends the session
        if sent < len(data):
            rest = data[sent:]
            self._lines[:] = [rest]
            self._events = rest.count(b"\n")
            self._bytes = len(rest)
            self._busy = True
            self.wake()
            return
        self._lines.clear()
        self._events = self._bytes = 0

    def wake(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            trio.lowlevel.reschedule(writer)

    def close(self) -> None:
        """No more puts; the writer gets what is left, then :class:`OutboxClosed`."""
        self._closed = True
        self.wake()

    async def drain(self, send: Callable[[bytes], Awaitable[None]]) -> NoReturn:
        """The writer task: send everything queued, batch by batch, until closed and empty.

        Raises :class:`OutboxClosed` at the end, or whatever ``send`` raises.
        """
        while True:
            # No local keeps the batch: an idle writer should not hold its last one.
            await send(await self._take_all())
            self._busy = bool(self._lines)

    async def _take_all(self) -> bytes:
        """Wait until woken with something queued, then take every line as one chunk.

        The writer is busy from here until its queue is empty again.
        """
        while not self._lines:
            if self._closed:
                raise OutboxClosed
            self._writer = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(self._abort_wait)
        batch = b"".join(self._lines)
        self._lines.clear()
        self._events = self._bytes = 0
        self._busy = True
        return batch

    def _abort_wait(self, raise_cancel: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        self._writer = None
        return trio.lowlevel.Abort.SUCCEEDED
