"""Which room events the screen has shown, and how to resume a room with no gap and no repeat.

Theory of operation
-------------------
Every room event (``joined``, ``left``, ``message``) carries the room's ``seq``.
A :class:`RoomSync` remembers the highest ``seq`` shown (the *watermark*).
Live events at or below the watermark are duplicates and are dropped; that is
the client half of "exactly once".

Joining has three parts, always in this order and never interleaved with live
events of the same room: our own ``joined`` (seq ``J``), one or more
``history`` pages, then ``members``. The pages are collected and judged only
when ``members`` arrives, because only then is the whole replay known.

A seq means something only on the history it came from, which ``welcome``
names (``server_id``). The caller compares it with the one it remembers and
says, per room, what the replay is (:data:`Replay`):

``fresh``
    no resume point was sent: the replay is the room's recent past.
``resumed``
    a resume point was sent to the same history: the replay is exactly what we
    missed. If it starts above ``watermark + 1``, retention dropped some.
``stale``
    a resume point was sent, but the history changed (a ``hello`` goes out
    before its ``welcome`` says whom it reached): the replay is an arbitrary
    slice of another numbering. It is dropped, the watermark forgotten, and the
    room's recent past before ``J`` fetched (one default page, what a fresh join
    gets), holding the room's live events until it is in, so nothing appears
    twice or out of order.

Nothing here does I/O; :class:`triochat` events in, decisions out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from triochat.protocol.events import Joined, RoomEvent

Replay = Literal["fresh", "resumed", "stale"]
HELD_LIMIT = 1000
"""Live events held while a refill is on its way; past this the refill is given up."""
HISTORY_CHANGED = "server history changed; showing recent history"
LOST = "some messages from while you were away are no longer on the server"
GAVE_UP = "could not fetch what was missed"


@dataclass
class Outcome:
    """What the caller should do after feeding an event."""

    show: list[RoomEvent] = field(default_factory=list)
    """Events to display, in order."""
    live: bool = True
    """False when ``show`` is the past (it must not change the member list)."""
    notes: list[str] = field(default_factory=list)
    """Lines for the person (history changed, messages lost to retention)."""
    fetch_before: int | None = None
    """Ask the server for the room's recent past before this seq (a refill)."""
    joined: Joined | None = None
    """Our own join, shown after the past it brought."""
    released: list[RoomEvent] = field(default_factory=list)
    """Live events that were held during a refill, to show after ``show``."""


@dataclass
class _Joining:
    own: Joined
    replay_kind: Replay
    replay: list[RoomEvent] = field(default_factory=list)


@dataclass
class RoomSync:
    """One room's bookkeeping. Create it when the room is joined; drop it when parted."""

    watermark: int = 0
    _joining: _Joining | None = None
    _refill: Joined | None = None
    """Our own ``joined`` after a stale resume, while the room's recent past is fetched."""
    _held: list[RoomEvent] = field(default_factory=list)

    @property
    def joining(self) -> bool:
        """Between our own ``joined`` and the ``members`` that ends the join."""
        return self._joining is not None

    @property
    def expects_page(self) -> bool:
        """A ``history`` page now belongs to a join or a refill in progress."""
        return self._joining is not None or self._refill is not None

    def resume_from(self) -> int | None:
        """The ``hello.resume`` value for this room: the last seq shown, if any."""
        return self.watermark if self.watermark > 0 else None

    def reset_connection(self) -> None:
        """The connection dropped: a join or refill in progress will never finish."""
        self._joining = None
        self._refill = None
        self._held.clear()

    def forget(self) -> None:
        """The history changed: our seqs mean nothing on the new one."""
        self.watermark = 0

    # --- feeding ----------------------------------------------------------------

    def own_joined(self, event: Joined, *, replay: Replay) -> None:
        self._joining = _Joining(own=event, replay_kind=replay)

    def history(self, events: list[RoomEvent]) -> Outcome:
        if self._joining is not None:
            self._joining.replay.extend(events)
            return Outcome()
        if self._refill is not None:
            return self._finish_refill(events)
        return Outcome()  # a page nobody here asked for

    def members(self) -> Outcome:
        """The end of a join: judge the replay collected since our ``joined``."""
        joining, self._joining = self._joining, None
        if joining is None:
            return Outcome()
        own = joining.own
        match joining.replay_kind:
            case "fresh":
                past = [e for e in joining.replay if e.seq > self.watermark]
                self._advance(own)
                return Outcome(show=past, live=False, joined=own)
            case "resumed":
                return self._resumed(own, joining.replay)
            case "stale":
                return self._start_refill(own)

    def live(self, event: RoomEvent) -> Outcome:
        if self._refill is not None:
            self._held.append(event)
            if len(self._held) > HELD_LIMIT:
                return self._give_up_refill()
            return Outcome()
        if event.seq <= self.watermark:
            return Outcome()
        self._advance(event)
        return Outcome(show=[event])

    # --- decisions ----------------------------------------------------------------

    def _resumed(self, own: Joined, replay: list[RoomEvent]) -> Outcome:
        missed = [e for e in replay if e.seq > self.watermark]
        notes = []
        if (missed[0].seq if missed else own.seq) > self.watermark + 1:
            notes.append(LOST)
        self._advance(own)
        return Outcome(show=missed, live=False, notes=notes)

    def _start_refill(self, own: Joined) -> Outcome:
        self.forget()
        self._refill = own
        return Outcome(notes=[HISTORY_CHANGED], fetch_before=own.seq)

    def _finish_refill(self, events: list[RoomEvent]) -> Outcome:
        own, self._refill = self._refill, None
        assert own is not None
        past = [e for e in events if e.seq < own.seq]
        for event in past:
            self._advance(event)
        self._advance(own)
        return Outcome(show=past, live=False, released=self._release())

    def _give_up_refill(self) -> Outcome:
        own, self._refill = self._refill, None
        assert own is not None
        self._advance(own)
        return Outcome(notes=[GAVE_UP], released=self._release())

    def _release(self) -> list[RoomEvent]:
        held, self._held = self._held, []
        released = [e for e in held if e.seq > self.watermark]
        for event in released:
            self._advance(event)
        return released

    def _advance(self, event: RoomEvent) -> None:
        self.watermark = max(self.watermark, event.seq)
