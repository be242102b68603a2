"""Each client's send side: the one place that decides what reaches its socket, and when.

Theory of operation
-------------------
Rule 1: everything that changes what a connection will write lives in this
file. Transports read and frame; they never write to a session's socket. A
WebSocket reader that must answer (a Pong, the answer to a Close) hands the
frame to :meth:`Outbox.control`; the goodbye goes through :meth:`Outbox.finish`.

What an outbox holds, in the order it goes out:

* ``held``: wire bytes of a write the socket took only in part. They finish a
  frame, so they go before anything else;
* ``control``: wire frames the transport asked for (WebSocket Pong, Ping,
  Close). They may pass lines not yet framed, never a frame under way;
* ``lines``: the bounded queue of encoded lines, framed (a text frame on
  WebSocket, nothing on TCP) when they are taken, all of them in one frame.

Who writes (:class:`Writing`), one at a time::

    IDLE --a direct write the socket took only in part--> WRITER
    WRITER --the writer's write completed, nothing pending--> IDLE
    IDLE | WRITER --a write failed, or was cut short--> BROKEN (final)

* ``IDLE``: nothing is being written. A flush (from the flusher) or a control
  frame (from the reader) is written at once without waiting: one system call,
  no task switch. What the socket does not take becomes ``held``.
* ``WRITER``: the writer task owns the socket. It takes held + control + lines
  as one write and waits for it; nothing else writes until it is done. A
  stranger (no ``hello`` yet) has no writer task: its reader takes that role
  between reads (:meth:`Outbox.write_owed`).
* ``BROKEN``: a write failed, or was cancelled part-way through a frame. The
  byte stream is no longer the protocol, so nothing more is ever written and
  everything accepted is dropped.

What it accepts (:class:`Accepting`)::

    OPEN --seal()--> SEALED --finish() or discard()--> DONE

* ``OPEN``: lines and control frames.
* ``SEALED``: no more lines (:meth:`Outbox.put` swallows them; fan-out's
  :attr:`Outbox.queue` appends to a list nobody reads). What was queued still
  goes, unless :meth:`Outbox.abandon` dropped it; control frames still go.
* ``DONE``: the goodbye is written, or the client is gone: nothing more.

Lines reach an outbox two ways, neither of which blocks:

* :attr:`Outbox.queue`, fan-out's hot path, is the list's own ``append``: no
  check at all. The bound is checked when the outbox is flushed, a few
  scheduler turns later, so a client can pass it by at most one burst before
  it is evicted. Those lines are shared: every recipient's list holds the same
  bytes object, so a burst is in memory once, whatever the number of recipients;
* :meth:`Outbox.put`, for lines meant for this one client (replies, history
  pages, replays), counts every line against both bounds at once and reports a
  full outbox to the caller (who evicts). Nothing is exempt but the shutdown
  notice: a client that does not read pins its bound at most, whatever it asks for.

A replay (the past sent on a join or resume) can be far larger than the bound,
so the hub sends it a page at a time: a ``put`` with ``replay`` set makes the
outbox call ``on_replay_sent`` once that page has been handed to the socket,
and the hub then sends the next one (see :meth:`triochat.server.hub.Hub.pump`).

Batching needs one more thing: if the first event of a burst were written at
once, it would go alone while the readers carrying the rest of the burst are
still waiting for their turn. So nothing is written when it is queued; the
:class:`Flusher`, a single task, is told (an outbox that ``put`` made
non-empty, or the recipients of a fan-out), lets a few scheduler turns pass
(each turn also polls the network, so readers with data waiting run) and then
flushes everything it was told about. The turns are spent once per burst by
one task, and a room's recipients are flushed once per burst however many
events the burst held. The writer task is started the first time a write
leaves bytes behind: where direct writes carry everything, a client costs one
task, not two.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from enum import Enum
from itertools import chain
from typing import NoReturn, Protocol

import trio

from triochat.errors import ConnectionLost
from triochat.transport.base import Direct, Frame

PRESENCE_DELAY_S = 0.05
"""How late a large room's presence may be written (see :meth:`Flusher.mark_presence`)."""

SAVE_WAIT_S = 0.05
"""The longest a flush waits for a history group being saved (see :meth:`Flusher.committing`).

A group takes about a millisecond; a disk that stalls (a slow fsync) must not
hold back what does not wait for history (errors, pongs, private lines) for
longer than this.
"""


class OutboxClosed(Exception):
    """The outbox was sealed and everything in it has been written."""


class Writing(Enum):
    """Who may write to the socket (see the module docstring)."""

    IDLE = "idle"
    WRITER = "writer"
    BROKEN = "broken"


class Accepting(Enum):
    """What the outbox still takes (see the module docstring)."""

    OPEN = "open"
    SEALED = "sealed"
    DONE = "done"


class _Replay(Enum):
    """Where the last replay page put in the outbox is."""

    NONE = 0
    QUEUED = 1
    """In the list, not yet taken."""
    WRITING = 2
    """Taken for a write that has not completed (a held rest included)."""


def _nothing() -> None:
    pass


class Outbox:
    """One client's send side (see the module docstring)."""

    def __init__(
        self,
        max_events: int,
        max_bytes: int,
        *,
        flusher: Flusher | None = None,
        direct: Direct | None = None,
        frame: Frame | None = None,
        write_lines: Direct | None = None,
        on_overflow: Callable[[], None] = _nothing,
        on_replay_sent: Callable[[], None] = _nothing,
    ) -> None:
        """Without a ``flusher`` every put wakes the writer; without ``direct``
        (a stream that is not a socket) the writer writes everything.

        ``frame`` turns taken lines into wire bytes (``None``: they go as they are);
        ``write_lines`` is ``direct(frame(lines))`` in one call, if the transport has it;
        ``on_overflow`` evicts the client when the flusher finds it over the bound;
        ``on_replay_sent`` asks for the next page of a replay.
        """
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._flusher = flusher
        self._direct = direct
        self._frame = frame
        if write_lines is None and direct is not None:
            write_lines = direct if frame is None else lambda data: direct(frame(data))
        self._write_lines = write_lines
        self.evict = on_overflow
        self._on_replay_sent = on_replay_sent
        self._lines: list[bytes] = []
        self._fanned: list[bytes] = self._lines
        """The list :attr:`queue` appends to: ``_lines`` until :meth:`seal`."""
        self.queue: Callable[[bytes], None] = self._lines.append
        self._put_bytes = 0
        """Bytes of the lines :meth:`put` queued and nobody has taken yet."""
        self._control = b""
        self._held = b""
        self.writing = Writing.IDLE
        self.accepting = Accepting.OPEN
        self._replay = _Replay.NONE
        self._told = False
        """The flusher has been told of a ``put`` since the last flush. Lines already
        queued say nothing: a large room's presence may wait for a later flush."""
        self._writer: trio.lowlevel.Task | None = None
        """The writer task while it waits for work (one task: no ParkingLot needed)."""
        self._spawn: Callable[[], None] | None = None
        self._writer_started = False

    def __len__(self) -> int:
        return len(self._lines)

    @property
    def waiting_bytes(self) -> int:
        """Bytes accepted and not yet handed to the socket (metrics; counted when asked)."""
        return sum(map(len, self._lines)) + len(self._held) + len(self._control)

    @property
    def sent_all(self) -> bool:
        """Whether everything accepted has been handed to the socket."""
        return self.writing is Writing.IDLE and not (self._lines or self._control)

    # --- accepting ----------------------------------------------------------------

    def put(self, line: bytes, *, replay: bool = False, last_word: bool = False) -> bool:
        """Queue ``line``; ``False`` if it would pass a bound (the line is then dropped).

        ``replay``: a page of a replay; ``on_replay_sent`` follows its write.
        ``last_word``: the one line a client gets after everything else (the
        shutdown notice), taken even from a full outbox. A sealed outbox
        swallows lines: its client is on its way out.
        """
        if self.accepting is not Accepting.OPEN:
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
        if not self._told:
            self._told = True
            if self._flusher is None:
                self.wake()  # after the append: a writer not yet started is started for it
            else:
                self._flusher.mark(self)
        return True

    def control(self, wire: bytes) -> None:
        """Send a transport's control frame soon: before lines not yet framed,
        after any frame under way. Written at once if nobody is writing."""
        if self.accepting is Accepting.DONE or self.writing is Writing.BROKEN or not wire:
            return
        self._control += wire
        if self.writing is Writing.IDLE and self._direct is not None:
            wire, self._control = self._control, b""
            self._write_directly(wire)
        else:
            self.wake()

    def closing(self, wire: bytes) -> None:
        """The answer to a peer's Close: kept for :meth:`finish`, which the session's
        goodbye calls once the session has ended (see :class:`Replies`)."""
        if self.accepting is Accepting.DONE or self.writing is Writing.BROKEN:
            return
        self._control += wire

    def seal(self) -> None:
        """No more lines; what is queued still goes (see the module docstring).

        :attr:`queue` stays bound to the old list, so fan-out that still
        reaches this client (a delivery held for a commit) goes nowhere.
        """
        if self.accepting is Accepting.OPEN:
            self.accepting = Accepting.SEALED
            self._lines = self._lines[:]
            self._on_replay_sent = _nothing
        self.wake()

    def abandon(self) -> None:
        """Drop the lines not yet taken: the client will not get them (an eviction)."""
        self.seal()
        self._lines.clear()
        self._put_bytes = 0

    def discard(self) -> None:
        """Drop everything and every callback: the client is gone for good.

        A session that ended must not keep its buffers alive through whatever
        still refers to it (a held delivery, a reference cycle the collector
        has not reached yet).
        """
        self.accepting = Accepting.DONE
        self._fanned.clear()
        self._lines = []
        self._put_bytes = 0
        self._control = self._held = b""
        self._direct = self._frame = self._write_lines = None
        self.evict = self._on_replay_sent = _nothing

    # --- writing ----------------------------------------------------------------

    def flush(self) -> bool:
        """Write what is queued at once if nobody is writing; else wake the writer.

        ``False`` if what is queued is over the bound (nothing is written then).
        """
        self._told = False
        lines = self._lines
        if not lines:
            return True
        if (
            self.writing is not Writing.IDLE
            or self._control
            or self._replay is not _Replay.NONE
            or self._write_lines is None
        ):
            return self._flush_with_care()
        # The common case, on its own (it runs once per recipient of every flush):
        # lines alone, nothing held, no replay page, a socket to write to.
        data = b"".join(lines)
        if len(lines) > self._max_events or len(data) > self._max_bytes:
            return False
        lines.clear()
        self._put_bytes = 0
        held = self._write_lines(data)
        if held:
            self._held = held
            self.writing = Writing.WRITER
            self.wake()
        return True

    def _flush_with_care(self) -> bool:
        """:meth:`flush` for every other case (a writer, control frames, a replay page)."""
        lines = self._lines
        if self.accepting is Accepting.DONE or self.writing is Writing.BROKEN:
            return True
        if len(lines) > self._max_events:
            return False
        if self.writing is Writing.WRITER or self._direct is None:
            if sum(map(len, lines)) > self._max_bytes:
                return False
            self.wake()
            return True
        data = b"".join(lines)
        if len(data) > self._max_bytes:
            return False
        self._write_directly(self._take(data))
        return True

    def _write_directly(self, wire: bytes) -> None:
        """Write ``wire`` without waiting (only while ``IDLE``); the writer gets the rest."""
        assert self.writing is Writing.IDLE
        assert self._direct is not None
        self._held = self._direct(wire)
        if self._held:
            self.writing = Writing.WRITER
            self.wake()
        else:
            self._written()

    def _take(self, data: bytes) -> bytes:
        """Everything pending, in wire form; ``data`` is the queued lines, joined."""
        self._lines.clear()
        self._put_bytes = 0
        self._told = False
        if self._replay is _Replay.QUEUED:
            self._replay = _Replay.WRITING
        if data and self._frame is not None:
            data = self._frame(data)
        wire, self._held, self._control = self._held + self._control + data, b"", b""
        return wire

    def _written(self) -> None:
        """What was taken is on the socket: a replay page written asks for the next."""
        if self._replay is _Replay.WRITING:
            self._replay = _Replay.NONE
            self._on_replay_sent()

    def _pending(self) -> bool:
        return bool(self._held or self._control or self._lines)

    def _cut(self) -> None:
        """A write failed or was cut short: ``BROKEN``, for good."""
        self.writing = Writing.BROKEN
        self._lines.clear()
        self._control = self._held = b""

    async def _send(self, stream: trio.abc.Stream, wire: bytes) -> None:
        """The one write that waits, and the one check that nothing follows a cut."""
        if self.writing is Writing.BROKEN:
            raise ConnectionLost("an earlier write was cut short")
        self.writing = Writing.WRITER
        try:
            await stream.send_all(wire)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._cut()
            raise ConnectionLost(str(exc)) from None
        except BaseException:  # cancelled part-way: the frame under way is cut
            self._cut()
            raise
        self._written()
        if not self._pending():
            self.writing = Writing.IDLE

    async def write_owed(self, stream: trio.abc.Stream) -> None:
        """Write, in the calling task, what only a writer task could write
        (:meth:`_writer_needed`).

        For a session that has no writer task (a stranger, before its ``hello``):
        its reader calls this before it reads on, so its answers are not held
        back until a nursery opens.
        """
        if self._writer_needed():
            await self._send(stream, self._take(b"".join(self._lines)))

    # --- the writer task ----------------------------------------------------------

    def start(self, spawn: Callable[[], None]) -> None:
        """``spawn`` starts a task running :meth:`drain`; called when a writer is first needed."""
        self._spawn = spawn
        self.wake()

    def wake(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            trio.lowlevel.reschedule(writer)
        elif not self._writer_started and self._spawn is not None and self._writer_needed():
            self._writer_started = True
            self._spawn()

    def _writer_needed(self) -> bool:
        """Whether only a writer task can write what is pending: a write left bytes
        behind, or nothing else writes (no direct write, or no flusher to call it).
        Lines merely queued are the flusher's."""
        if self.writing is Writing.WRITER:
            return True
        return self._pending() and (self._direct is None or self._flusher is None)

    async def drain(self, stream: trio.abc.Stream) -> NoReturn:
        """The writer task: write everything pending, batch by batch, until sealed and empty.

        Raises :class:`OutboxClosed` at the end, :class:`ConnectionLost` if a write fails.
        """
        self._writer_started = True
        while True:
            await self._await_work()
            # No local keeps the batch: an idle writer should not hold its last one.
            await self._send(stream, self._take(b"".join(self._lines)))

    async def _await_work(self) -> None:
        while not self._pending():
            if self.accepting is not Accepting.OPEN:
                raise OutboxClosed
            self._writer = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(self._abort_wait)

    def _abort_wait(self, raise_cancel: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        self._writer = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def finish(self, stream: trio.abc.Stream, goodbye: Callable[[], bytes] = bytes) -> None:
        """After the writer task: write what is pending, then ``goodbye()``; ``DONE``.

        ``goodbye`` is called only once the pending lines are framed: a transport
        frames no text after its Close. :class:`ConnectionLost` if that cannot be
        written (``BROKEN`` included). The caller bounds the time.
        """
        self.seal()
        wire = self._take(b"".join(self._lines))
        wire += goodbye()
        self.accepting = Accepting.DONE
        if wire or self.writing is Writing.BROKEN:
            await self._send(stream, wire)


class Flushable(Protocol):
    def flush(self) -> bool:
        """Send or hand over what is queued; ``False`` if over the bound."""
        ...

    def evict(self) -> None: ...


DELAY_BOUNDS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
"""Seconds: the upper bounds of :class:`Delays`' buckets (the last one is unbounded)."""


class Delays:
    """A histogram in plain integers: counts per bucket of :data:`DELAY_BOUNDS`, and the sum."""

    def __init__(self) -> None:
        self.counts = [0] * (len(DELAY_BOUNDS) + 1)
        self.total = 0.0

    def add(self, seconds: float) -> None:
        self.counts[bisect_left(DELAY_BOUNDS, seconds)] += 1
        self.total += seconds


class Flusher:
    """Flushes what it is told about, a few scheduler turns after the first news."""

    def __init__(self, turns: int, presence_burst: float = math.inf) -> None:
        self._turns = turns
        self._presence_burst = presence_burst
        """Presence events of one large room that are written at once, without waiting
        for :data:`PRESENCE_DELAY_S`: a quarter of the outbox bound."""
        self._dirty: list[Flushable] = []
        self._groups: dict[int, Iterable[Flushable]] = {}
        """Fan-out recipients, by identity: a room's shared tuple is flushed once per burst."""
        self._presence: dict[str, Iterable[Flushable]] = {}
        """Large rooms' newest recipients, since the first presence not yet written."""
        self._presence_counts: dict[str, int] = {}
        """Presence events of each of those rooms not yet written."""
        self._presence_due = math.inf
        self._waiting = trio.lowlevel.ParkingLot()
        self._saving = False
        self._saved = trio.lowlevel.ParkingLot()
        self.delays = Delays()
        """How long each burst took from the flusher's wake-up to its writes (metrics)."""

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
        queued lines along, in order, so they are never overtaken. Once a room's
        unwritten presence reaches ``presence_burst`` events, it is written at once
        (:meth:`_flush_presence`).
        """
        if not self._presence:
            self._presence_due = trio.current_time() + PRESENCE_DELAY_S
            self._waiting.unpark()  # to wait with the deadline
        self._presence[room] = recipients
        count = self._presence_counts[room] = self._presence_counts.get(room, 0) + 1
        if count >= self._presence_burst:
            self._flush_presence(room)

    def _flush_presence(self, room: str) -> None:
        """Write ``room``'s presence now: a burst of joins or leaves (a thousand members
        quitting together, a node's members gone with it) must not queue more in one
        :data:`PRESENCE_DELAY_S` than a member's outbox may hold, or every member would be
        evicted however fast it reads. An outbox over its bound is left to the flusher,
        which evicts it: an eviction publishes a ``left``, not to be done from here."""
        recipients = self._presence.pop(room)
        del self._presence_counts[room]
        if not self._presence:
            self._presence_due = math.inf
        for recipient in recipients:
            if not recipient.flush():
                self.mark(recipient)

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
            woke = trio.current_time()
            await self.settle()
            if self._saving:
                with trio.move_on_after(SAVE_WAIT_S):
                    await self._saved.park()
            dirty, self._dirty = self._dirty, []
            groups, self._groups = self._groups, {}
            presence: Iterable[Iterable[Flushable]] = ()
            if trio.current_time() >= self._presence_due:
                presence, self._presence = self._presence.values(), {}
                self._presence_counts = {}
                self._presence_due = math.inf
            # An eviction publishes ``left``, which may mark more: that is the next round.
            for recipient in chain(dirty, *groups.values(), *presence):
                if not recipient.flush():
                    recipient.evict()
            self.delays.add(trio.current_time() - woke)
