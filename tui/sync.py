"""Which room events the screen has shown, and how to resume a room with no gap and no repeat.

Theory of operation
-------------------
Every room event (``joined``, ``left``, ``message``) carries the room's ``seq``.
A :class:`RoomSync` remembers the highest ``seq`` shown (the *watermark*) and a
fingerprint of that event. Live events at or below the watermark are
duplicates and are dropped; that is the client half of "exactly once".

Joining has three parts, always in this order and never interleaved with live
events of the same room: our own ``joined`` (seq ``J``), one or more
``history`` pages, then ``members``. The pages are collected and judged only
when ``members`` arrives, because only then is the whole replay known.

Reconnecting resumes from ``watermark - 1`` rather than ``watermark``, so the
replay starts with the event we saw last. If that first replayed event has
the fingerprint we remember, the server is the one we knew and everything after
it is new. If it differs, or ``J`` is not above the watermark, the server has
restarted and numbers its rooms from 1 again: our watermark means nothing
there. We then forget it, ask for the room's retained past before ``J`` (one
page) and hold the room's live events until that page is in, so the messages
sent while we were away appear once and in order.

Nothing here does I/O; :class:`triochat` events in, decisions out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from triochat.protocol.events import Joined, Left, Message, RoomEvent

Fingerprint = tuple[str, str, float, str]
HELD_LIMIT = 1000
"""Live events held while a refill is on its way; past this the refill is given up."""


def fingerprint(event: RoomEvent) -> Fingerprint:
    """What identifies an event across servers: the same ``seq`` on another server differs here."""
    match event:
        case Message():
            return ("message", event.from_, event.ts, event.text)
        case Joined():
            return ("joined", event.nick, event.ts, "")
        case Left():
            return ("left", event.nick, event.ts, str(event.reason))


@dataclass
class Outcome:
    """What the caller should do after feeding an event."""

    show: list[RoomEvent] = field(default_factory=list)
    """Events to display, in order."""
    live: bool = True
    """False when ``show`` is the past (it must not change the member list)."""
    notes: list[str] = field(default_factory=list)
    """Lines for the person (restart detected, messages lost to retention)."""
    fetch_before: int | None = None
    """Ask the server for the room's past before this seq (a refill)."""
    joined: Joined | None = None
    """Our own join, shown after the past it brought."""
    released: list[RoomEvent] = field(default_factory=list)
    """Live events that were held during a refill, to show after ``show``."""


@dataclass
class _Joining:
    own: Joined
    resumed: bool
    replay: list[RoomEvent] = field(default_factory=list)


@dataclass
class RoomSync:
    """One room's bookkeeping. Create it when the room is joined; drop it when parted."""

    watermark: int = 0
    print_: Fingerprint | None = None
    _joining: _Joining | None = None
    _refill: Joined | None = None
    """Our own ``joined`` on a restarted server, while its past is being fetched."""
    _held: list[RoomEvent] = field(default_factory=list)

    @property
    def joining(self) -> bool:
        """Between our own ``joined`` and the ``members`` that ends the join."""
        return self._joining is not None

    def resume_from(self) -> int | None:
        """The ``hello.resume`` value for this room: one before the last event we saw."""
        return self.watermark - 1 if self.watermark > 0 else None

    def reset_connection(self) -> None:
        """The connection dropped: a join or refill in progress will never finish."""
        self._joining = None
        self._refill = None
        self._held.clear()

    # --- feeding ----------------------------------------------------------------

    def own_joined(self, event: Joined, *, resumed: bool) -> None:
        self._joining = _Joining(own=event, resumed=resumed)

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
        if not joining.resumed:
            past = [e for e in joining.replay if e.seq > self.watermark]
            self._advance(own)
            return Outcome(show=past, live=False, joined=own)
        if self._same_server(own, joining.replay):
            return self._resumed(own, joining.replay)
        return self._restarted(own)

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

    def _same_server(self, own: Joined, replay: list[RoomEvent]) -> bool:
        if own.seq <= self.watermark:
            return False
        if replay and replay[0].seq <= self.watermark:
            return replay[0].seq == self.watermark and fingerprint(replay[0]) == self.print_
        return True  # the event we saw last is gone from retention: same server, a gap

    def _resumed(self, own: Joined, replay: list[RoomEvent]) -> Outcome:
        missed = [e for e in replay if e.seq > self.watermark]
        notes = []
        if (missed[0].seq if missed else own.seq) > self.watermark + 1:
            notes.append("some messages from while you were away are no longer on the server")
        self._advance(own)
        return Outcome(show=missed, live=False, notes=notes)

    def _restarted(self, own: Joined) -> Outcome:
        self.watermark, self.print_ = 0, None
        self._refill = own
        return Outcome(notes=["the server restarted"], fetch_before=own.seq)

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
        return Outcome(notes=["could not fetch what was missed"], released=self._release())

    def _release(self) -> list[RoomEvent]:
        held, self._held = self._held, []
        released = [e for e in held if e.seq > self.watermark]
        for event in released:
            self._advance(event)
        return released

    def _advance(self, event: RoomEvent) -> None:
        if event.seq > self.watermark:
            self.watermark, self.print_ = event.seq, fingerprint(event)
