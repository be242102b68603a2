"""One client's bounded queue of encoded lines, and the flusher that writes them in bulk.

Theory of operation
-------------------
Lines reach an outbox two ways, neither of which blocks:

* :meth:`Outbox.queue`, fan-out's hot path, is the list's own ``append``: no
  check at all. The bound is checked when the outbox is flushed, a few
  scheduler turns later, so a client can pass it by at most one burst before
  it is evicted. Those lines are shared: every recipient's list holds the same
  bytes object, so a burst is in memory once, whatever the number of recipients;
* :meth:`Outbox.put`, for lines meant for this one client (replies, history
  pages, replays), counts every line against both bounds at once and reports a
  full outbox to the caller (who evicts). Nothing is exempt: a client that
  does not read pins its bound at most, whatever it asks for.

A replay (the past sent on a join or resume) can be far larger than the bound,
so the hub sends it a page at a time: a ``put`` with ``replay`` set makes the
outbox call ``on_replay_sent`` once that page has been handed to the socket,
and the hub then sends the next one (see :meth:`triochat.server.hub.Hub.pump`).

Both append to the same list, so order is the order of the calls, and whatever
is queued goes out as one write.

Batching needs one more thing: if the first event of a burst were written at
once, it would go alone while the readers carrying the rest of the burst are
still waiting for their turn. So nothing is written when it is queued; the
:class:`Flusher`, a single task, is told (an outbox that ``put`` made
non-empty, or the recipients of a fan-out), lets a few scheduler turns pass
(each turn also polls the network, so readers with data waiting run) and then
flushes everything it was told about. The turns are spent once per burst by
one task, and a room's recipients are flushed once per burst however many
events the burst held.

Flushing is a write without waiting where the connection offers one (a TCP
socket, or WebSocket on wsproto, whose frames we build): the common case, a
socket with room in its buffer, costs one system call and no task switch.
Whatever does not fit (the connection holds it), and everything on a
connection without such a write (trio-websocket, which owns framing and the
stream), is left to the client's writer task, which waits as long as it
takes; that task is started the first time it is needed. The writer is *busy*
from the moment it is handed data until its queue is empty again; while it is
busy nothing else writes, so bytes never interleave.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from enum import Enum
from itertools import chain
from typing import NoReturn, Protocol

import trio

from triochat.transport.base import WriteNow

PRESENCE_DELAY_S = 0.05
"""How late a large room's presence may be written (see :meth:`Flusher.mark_presence`)."""

SAVE_WAIT_S = 0.05
"""The longest a flush waits for a history group being saved (see :meth:`Flusher.committing`).

A group takes about a millisecond; a disk that stalls (a slow fsync) must not
hold back what does not wait for history (errors, pongs, private lines) for
longer than this.
"""


class OutboxClosed(Exception):
    """The outbox was closed and everything in it has been taken."""


class _Replay(Enum):
    """Where the last replay page put in the outbox is."""

    NONE = 0
    QUEUED = 1
    """In the list, not yet taken."""
    WRITING = 2
    """Taken for a write that has not completed (a held rest included)."""


def _nothing() -> None:
    pass


class Flushable(Protocol):
    def flush(self) -> bool:
        """Send or hand over what is queued; ``False`` if over the bound."""
        ...

    def evict(self) -> None: ...


class Flusher:
    """Flushes what it is told about, a few scheduler turns after the first news."""

    def __init__(self, turns: int) -> None:
        self._turns = turns
        self._dirty: list[Flushable] = []
        self._groups: dict[int, Iterable[Flushable]] = {}
        """Fan-out recipients, by identity: a room's shared tuple is flushed once per burst."""
        self._presence: dict[str, Iterable[Flushable]] = {}
        """Large rooms' newest recipients, since the first presence not yet written."""
        self._presence_due = math.inf
        self._waiting = trio.lowlevel.ParkingLot()
        self._saving = False
        self._saved = trio.lowlevel.ParkingLot()

    @contextmanager
    def committing(self) -> Iterator[None]:
        """Mark a history group being written (see :func:`triochat.server.store.run_committer`).

        A flush that comes due meanwhile waits for that group's release and
        sends both at once. Without this, the events that arrive while one
        group is saved form the next group, whose senders then answer together
        while the group after is saved: every burst stays split in two, and
        each write carries half as much. It waits for one group at most, and
        at most ``SAVE_WAIT_S``, so neither a steady stream of commits nor a
        stalled one can hold writes back.
        """
        self._saving = True
        try:
            yield
        finally:
            self._saving = False
            self._saved.unpark_all()

    def mark(self, outbox: Flushable) -> None:
        if not self._dirty and not self._groups:
            self._waiting.unpark()
        self._dirty.append(outbox)

    def mark_group(self, recipients: Iterable[Flushable]) -> None:
        if not self._dirty and not self._groups:
            self._waiting.unpark()
        self._groups[id(recipients)] = recipients

    def mark_presence(self, room: str, recipients: Iterable[Flushable]) -> None:
        """Presence (``joined``, ``left``) queued for a large room's ``recipients``: flush
        them within :data:`PRESENCE_DELAY_S`, once for all the room's presence meanwhile.

        Each join or leave makes a new recipients tuple, so flushing each as a group
        would flush the whole room once per event. Only the room's newest tuple is
        kept: a member missing from it has left, and its own ``left`` is a ``put``,
        which tells the flusher of it. Anything else flushed meanwhile takes the
        queued lines along, in order, so they are never overtaken.
        """
        if not self._presence:
            self._presence_due = trio.current_time() + PRESENCE_DELAY_S
            self._waiting.unpark()  # to wait with the deadline
        self._presence[room] = recipients

    async def settle(self) -> None:
        """Let the scheduler turns pass that a burst's events need to arrive.

        Each turn also polls the network, so readers with data waiting run.
        The flusher does this before flushing; the history committer before
        taking a group, so both serve a burst whole.
        """
        for _ in range(self._turns):
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def run(self) -> None:
        while True:
            while not self._dirty and not self._groups:
                if trio.current_time() >= self._presence_due:
                    break
                with trio.move_on_at(self._presence_due):
                    await self._waiting.park()
            await self.settle()
            if self._saving:
                with trio.move_on_after(SAVE_WAIT_S):
                    await self._saved.park()
            dirty, self._dirty = self._dirty, []
            groups, self._groups = self._groups, {}
            presence: Iterable[Iterable[Flushable]] = ()
            if trio.current_time() >= self._presence_due:
                presence, self._presence = self._presence.values(), {}
                self._presence_due = math.inf
            # An eviction publishes ``left``, which may mark more: that is the next round.
            for recipient in chain(dirty, *groups.values(), *presence):
                if not recipient.flush():
                    recipient.evict()


class Outbox:
    def __init__(
        self,
        max_events: int,
        max_bytes: int,
        flusher: Flusher | None = None,
        write_now: WriteNow | None = None,
        on_overflow: Callable[[], None] = lambda: None,
        on_replay_sent: Callable[[], None] = lambda: None,
    ) -> None:
        """Without a ``flusher`` every put wakes the writer directly.

        ``write_now`` is the connection's write without waiting, if it has one;
        ``on_overflow`` evicts the client when the flusher finds it over the bound;
        ``on_replay_sent`` asks for the next page of a replay (see the module docstring).
        """
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._flusher = flusher
        self._write_now = write_now
        self.evict = on_overflow
        self._on_replay_sent = on_replay_sent
        self._lines: list[bytes] = []
        self._fanned: list[bytes] = self._lines
        """The list :attr:`queue` appends to: ``_lines`` until :meth:`close`."""
        self.queue: Callable[[bytes], None] = self._lines.append
        self._put_bytes = 0
        """Bytes of the lines :meth:`put` queued and nobody has taken yet."""
        self._replay: _Replay = _Replay.NONE
        self._told = False
        """The flusher has been told of a ``put`` since the last flush. Lines already
        queued say nothing: a large room's presence may wait for a later flush."""
        self._busy = False
        """The writer task owns what is queued (see the module docstring)."""
        self._held = False
        """The connection holds bytes of a flush that only the writer's send can write."""
        self._closed = False
        self._writer: trio.lowlevel.Task | None = None
        """The writer task while it waits for lines (one task: no ParkingLot needed)."""
        self._spawn: Callable[[], None] | None = None
        self._writer_started = False
        """The writer task is started on first need (see :meth:`start`), then stays."""

    def __len__(self) -> int:
        return len(self._lines)

    def put(self, line: bytes, *, replay: bool = False, last_word: bool = False) -> bool:
        """Queue ``line``; ``False`` if it would pass a bound (the line is then dropped).

        ``replay``: a page of a replay; ``on_replay_sent`` follows its write.
        ``last_word``: the one line a client gets after everything else (the
        shutdown notice), taken even from a full outbox. A closed outbox
        swallows lines: its client is on its way out.
        """
        if self._closed:
            return True
        lines = self._lines
        size = len(line)
        if not last_word:
            if len(lines) >= self._max_events or self._put_bytes + size > self._max_bytes:
                return False
            self._put_bytes += size
        if replay:
            self._replay = _Replay.QUEUED
        lines.append(line)
        if self._flusher is None:
            if len(lines) == 1:  # was empty: the writer has not been woken for it yet
                self.wake()  # after the append: a writer not yet started is started for it
        elif not self._told:
            self._told = True
            self._flusher.mark(self)
        return True

    def flush(self) -> bool:
        """Write what is queued without waiting if possible; hand the rest to the writer.

        ``False`` if what is queued is over the bound (nothing is written then).
        """
        self._told = False
        lines = self._lines
        if self._closed or not lines:
            return True
        if len(lines) > self._max_events:
            return False
        if self._busy or self._write_now is None:
            if sum(map(len, lines)) > self._max_bytes:
                return False
            self.wake()
            return True
        data = b"".join(lines)
        if len(data) > self._max_bytes:
            return False
        self._taken()
        if not self._write_now(data):
            # The connection holds the rest (see WriteNow): the writer's send takes it.
            self._busy = self._held = True
            self.wake()
        else:
            self._written()
        return True

    def _taken(self) -> None:
        """Everything queued is now the connection's (or the writer's batch)."""
        self._lines.clear()
        self._put_bytes = 0
        if self._replay is _Replay.QUEUED:
            self._replay = _Replay.WRITING

    def _written(self) -> None:
        """What was taken is on the socket: a replay page written asks for the next."""
        if self._replay is _Replay.WRITING:
            self._replay = _Replay.NONE
            self._on_replay_sent()

    @property
    def sent_all(self) -> bool:
        """Whether everything accepted has been handed to the connection's socket."""
        return not self._lines and not self._held and not self._busy

    def start(self, spawn: Callable[[], None]) -> None:
        """``spawn`` starts a task running :meth:`drain`; called when a writer is first needed.

        Where writes without waiting carry everything (the common case on TCP
        and wsproto WebSocket), no writer task is ever started: an idle client
        costs one task, not two, and a short-lived one starts one fewer.
        """
        self._spawn = spawn
        self.wake()

    def wake(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            trio.lowlevel.reschedule(writer)
        elif not self._writer_started and self._spawn is not None and not self.sent_all:
            self._writer_started = True
            self._spawn()

    def close(self) -> None:
        """No more lines; the writer gets what is left, then :class:`OutboxClosed`.

        :attr:`queue` stays bound to the old list, so fan-out that still
        reaches this client (a delivery held for a commit) goes nowhere.
        """
        self._closed = True
        self._lines = self._lines[:]
        self._on_replay_sent = _nothing
        self.wake()

    def discard(self) -> None:
        """Drop everything queued and every callback: the client is gone for good.

        A session that ended must not keep its buffers alive through whatever
        still refers to it (a held delivery, a reference cycle the collector
        has not reached yet).
        """
        self._closed = True
        self._fanned.clear()
        self._lines = []
        self._put_bytes = 0
        self._write_now = None
        self.evict = self._on_replay_sent = _nothing

    async def drain(self, send: Callable[[bytes], Awaitable[None]]) -> NoReturn:
        """The writer task: send everything queued, batch by batch, until closed and empty.

        Raises :class:`OutboxClosed` at the end, or whatever ``send`` raises.
        """
        self._writer_started = True
        while True:
            # No local keeps the batch: an idle writer should not hold its last one.
            await send(await self._take_all())
            self._busy = bool(self._lines)
            self._written()

    async def _take_all(self) -> bytes:
        """Wait until woken with something queued, then take every line as one chunk.

        The writer is busy from here until its queue is empty again.
        """
        while not self._lines and not self._held:
            if self._closed:
                raise OutboxClosed
            self._writer = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(self._abort_wait)
        batch = b"".join(self._lines)
        self._taken()
        self._busy, self._held = True, False
        return batch

    def _abort_wait(self, raise_cancel: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        self._writer = None
        return trio.lowlevel.Abort.SUCCEEDED
