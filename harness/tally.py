"""What every simulated client saw, counted exactly.

A :class:`Tally` belongs to one receiver. For counted messages it keeps, per
sender, how many times each sequence number arrived (a ``bytearray`` indexed by
``n``), so lost and duplicated messages are exact counts, and the highest ``n``
seen so far, so a message older than one already seen is out of order. For
every room it keeps the last live ``seq``: room events reach a member in
``seq`` order with no gaps, so any ``seq`` other than last + 1 is a defect
(something dropped, duplicated or reordered, whatever its kind).

Latencies of all receivers of one phase go into one :class:`Latency`.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import msgspec
from hdrh.histogram import HdrHistogram

from harness.wire import ROOM_EVENTS, Line, decode_line, decode_lines, now_ns, parse_counted

HIGHEST_US = 600_000_000
"""Latencies are recorded in microseconds up to 10 minutes (longer ones are clamped)."""
SIGNIFICANT_BITS = 11
"""An HdrHistogram of 3 significant digits keeps 2048 (2**11) exact steps per power of two."""
SLOT_NS = 100_000_000
"""The timeline's resolution: deliveries and latency per 100 ms of receipt time."""


def hdr_value(us: int) -> int:
    """``us`` rounded down to the lowest value of its HdrHistogram bucket (3 digits).

    Values of one bucket are indistinguishable to the histogram, so counting the
    rounded values in a dict and recording each with its count is exactly the
    histogram of the raw values: cheap per delivery, and counts merge by adding.
    """
    us = min(max(us, 1), HIGHEST_US)
    shift = us.bit_length() - SIGNIFICANT_BITS
    return us >> shift << shift if shift > 0 else us


class Latency:
    """Delivery latency from scheduled send to receipt, as an HdrHistogram.

    Values are counted per histogram bucket (:func:`hdr_value`) as they come
    and go into the histogram when a figure is read.
    """

    def __init__(self, counts: dict[int, int] | None = None) -> None:
        self.counts: dict[int, int] = dict(counts or {})
        """Latency (µs, bucket-rounded) → how many deliveries took it."""
        self._hist: HdrHistogram | None = None

    def record_ns(self, ns: int) -> None:
        key = hdr_value(ns // 1000)
        self.counts[key] = self.counts.get(key, 0) + 1
        self._hist = None

    def add_counts(self, counts: dict[int, int]) -> None:
        for key, count in counts.items():
            self.counts[key] = self.counts.get(key, 0) + count
        self._hist = None

    def histogram(self) -> HdrHistogram:
        if self._hist is None:
            self._hist = HdrHistogram(1, HIGHEST_US, 3)
            for value, count in self.counts.items():
                self._hist.record_value(value, count)
        return self._hist

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    def ms(self, percentile: float) -> float:
        if not self.counts:
            return 0.0
        return float(self.histogram().get_value_at_percentile(percentile)) / 1000

    def max_ms(self) -> float:
        return float(self.histogram().get_max_value()) / 1000 if self.counts else 0.0

    def figures(self, prefix: str = "") -> dict[str, float]:
        return {
            f"{prefix}p50_ms": round(self.ms(50), 2),
            f"{prefix}p95_ms": round(self.ms(95), 2),
            f"{prefix}p99_ms": round(self.ms(99), 2),
            f"{prefix}max_ms": round(self.max_ms(), 2),
        }


class Slot(msgspec.Struct):
    """What arrived in one :data:`SLOT_NS` of a phase (all receivers together)."""

    deliveries: int = 0
    latency_us: dict[int, int] = msgspec.field(default_factory=dict)
    """As :attr:`Latency.counts`: bucket-rounded latency → deliveries (live ones only)."""

    def record_ns(self, ns: int) -> None:
        key = hdr_value(ns // 1000)
        self.latency_us[key] = self.latency_us.get(key, 0) + 1

    def add(self, other: Slot) -> None:
        self.deliveries += other.deliveries
        for key, count in other.latency_us.items():
            self.latency_us[key] = self.latency_us.get(key, 0) + count


def merge_timelines(timelines: list[dict[int, Slot]]) -> dict[int, Slot]:
    """Slot by slot sums: exact, since each slot counts deliveries and histogram buckets."""
    merged: dict[int, Slot] = {}
    for timeline in timelines:
        for number, slot in timeline.items():
            merged.setdefault(number, Slot()).add(slot)
    return dict(sorted(merged.items()))


@dataclass(frozen=True)
class Leaving:
    room: str
    nick: str
    reason: str
    at_ns: int


@dataclass
class Book:
    """What one traffic phase expects: sends per sender, shared by its receivers."""

    planned: list[int]
    """Messages each sender index will send at most."""
    started_ns: int = field(default_factory=now_ns)
    """The timeline's origin."""
    sent: list[int] = field(init=False)
    timeline: dict[int, Slot] = field(default_factory=dict)
    """Slot number (:data:`SLOT_NS` since ``started_ns``) → what arrived in it."""
    delivered: int = 0
    """Counted messages received, by all receivers together."""
    last_receipt_ns: int = 0

    offsets: list[int] = field(init=False)
    """Where each sender's messages start in a flat list of all of them (and the total)."""

    def __post_init__(self) -> None:
        self.sent = [0] * len(self.planned)
        self.offsets = [0]
        for count in self.planned:
            self.offsets.append(self.offsets[-1] + count)

    def slot(self, stamp: int) -> Slot:
        number = max(stamp - self.started_ns, 0) // SLOT_NS
        slot = self.timeline.get(number)
        if slot is None:
            slot = self.timeline[number] = Slot()
        return slot

    @property
    def latency(self) -> Latency:
        """The whole phase's latency: every slot's, merged."""
        return timeline_latency(self.timeline)


def timeline_latency(timeline: dict[int, Slot]) -> Latency:
    merged = Latency()
    for slot in timeline.values():
        merged.add_counts(slot.latency_us)
    return merged


class Tally:
    """One receiver's exact account of what arrived."""

    def __init__(self, *, roster: bool = True) -> None:
        """``roster`` False: do not keep who joined and left (thousands of members make
        that millions of records, and the load scenario does not look at them)."""
        self.book: Book | None = None
        self._roster = roster
        self.watch: frozenset[str] = frozenset()
        """Nicks whose ``left`` is kept even without ``roster``."""
        self.watch_prefix = ""
        """Nicks that start with it (when set) have their ``joined`` and ``left`` kept even
        without ``roster``: clients that come and go, whose nicks are not known ahead."""
        self._counts = bytearray()
        """Per message of the phase (sender ``s``'s ``n`` at ``book.offsets[s] + n``):
        how many times it arrived, up to 255."""
        self._highest = array("i")
        """Per sender: the highest ``n`` seen so far (-1: none)."""
        self._room_seq: dict[str, int] = {}
        self.out_of_order = 0
        self.seq_defects = 0
        self.strangers = 0
        """Counted messages that no sender of the current phase sent (or beyond its plan)."""
        self.garbled = 0
        self.errors: Counter[str] = Counter()
        self.error_codes: list[str] = []
        self.lefts: list[Leaving] = []
        self.joined: Counter[str] = Counter()
        self.members: dict[str | None, list[str]] = {}
        self.members_replies = 0
        self.acks = 0
        self.pongs = 0
        self.events = 0

    def follow(self, book: Book) -> None:
        """Count the counted messages of ``book``'s phase from now on."""
        self.book = book
        self._counts = bytearray(book.offsets[-1])
        self._highest = array("i", [-1]) * len(book.planned)

    # --- receiving ------------------------------------------------------------

    def take(self, lines: list[bytes], stamp: int | None = None) -> None:
        """Account for a batch of raw lines received together at ``stamp`` (default: now)."""
        take_round([self], [b"\n".join(lines) + b"\n"], now_ns() if stamp is None else stamp)

    def take_line(self, line: Line, stamp: int, *, replayed: bool = False) -> None:
        """Account for one decoded event received at ``stamp``.

        ``replayed``: it came from a ``history`` replay, so it counts and is
        checked like a live event, but its latency (it waited for a
        reconnection) does not go into the histogram.
        """
        _account([self], [line], stamp, live=not replayed)

    def _other(self, line: Line, stamp: int) -> None:
        """Any event but a counted room message."""
        kind = line.type
        if kind in ROOM_EVENTS and line.room is not None:
            self._room_event(line.room, line.seq)
        if kind == "left":
            if self._roster or line.nick in self.watch or self._watched(line.nick):
                self.lefts.append(Leaving(line.room or "", line.nick, line.reason, stamp))
        elif kind == "joined":
            if self._roster or self._watched(line.nick):
                self.joined[line.nick] += 1
        elif kind == "error":
            self.errors[line.code] += 1
            self.error_codes.append(line.code)
        elif kind == "ack":
            self.acks += 1
        elif kind == "pong":
            self.pongs += 1
        elif kind == "members":
            self.members[line.room] = line.nicks or []
            self.members_replies += 1

    def _watched(self, nick: str) -> bool:
        prefix = self.watch_prefix
        return bool(prefix) and nick.startswith(prefix)

    def _room_event(self, room: str, seq: int) -> None:
        last = self._room_seq.get(room)
        if last is not None and seq != last + 1:
            self.seq_defects += 1
        self._room_seq[room] = seq

    # --- verdicts --------------------------------------------------------------

    def lost_and_duplicated(self, sent: list[int], senders: range | list[int]) -> tuple[int, int]:
        """Messages of ``senders`` (as ``sent``) this receiver never got, and extra copies."""
        book = self.book
        if book is None:
            return sum(sent[sender] for sender in senders), 0
        counts = self._counts
        everyone = len(senders) == len(book.planned) and list(sent) == book.planned
        if everyone:  # the usual case, in C: every message of the phase was sent
            missing = counts.count(0)
            return missing, sum(counts) - (len(counts) - missing)
        lost = dup = 0
        for sender in senders:
            start, end = book.offsets[sender], book.offsets[sender + 1]
            got = counts[start : start + sent[sender]]
            lost += sent[sender] - (len(got) - got.count(0))
            mine = counts[start:end]
            dup += sum(mine) - (len(mine) - mine.count(0))
        return lost, dup

    def received(self) -> int:
        """Counted messages of the current phase received, copies included."""
        return sum(self._counts)

    def last_seq(self, room: str) -> int | None:
        """The ``seq`` of the last room event of ``room`` received (None: none yet)."""
        return self._room_seq.get(room)

    def left_of(self, nick: str) -> list[Leaving]:
        return [left for left in self.lefts if left.nick == nick]


class Receiver(Protocol):
    """A phase's receiver as the wait for deliveries sees it (a lean member, a sim)."""

    @property
    def closed_at_ns(self) -> int | None:
        """When the server ended its connection (None while open)."""

    @property
    def tally(self) -> Tally: ...


class Arrivals:
    """Whether a phase's receivers have everything that was sent, or never will.

    A receiver whose connection the server ended gets nothing more: what it
    lacks is lost, not late, so the wait stops counting on it (the judgement
    still counts the loss). Without that, a server that evicts every receiver
    would keep the harness idle until the phase's deadline.
    """

    def __init__(self, book: Book, receivers: Sequence[Receiver]) -> None:
        self._book = book
        self._receivers = len(receivers)
        self._open = list(receivers)
        self.closed = 0
        """Receivers whose connection has ended, as of the last :meth:`all_in`."""
        self._closed_received = 0

    def all_in(self, sent: int) -> bool:
        """Every receiver has counted ``sent`` messages or has been closed."""
        if any(receiver.closed_at_ns is not None for receiver in self._open):
            still = []
            for receiver in self._open:
                if receiver.closed_at_ns is None:
                    still.append(receiver)
                else:
                    self.closed += 1
                    self._closed_received += receiver.tally.received()
            self._open = still
        written_off = max(self.closed * sent - self._closed_received, 0)
        return self._book.delivered + written_off >= sent * self._receivers

    def complete(self, sent: int) -> bool:
        """Every receiver has counted ``sent`` messages (copies included)."""
        return self._book.delivered >= sent * self._receivers


def take_round(tallies: list[Tally], chunks: list[bytes], stamp: int) -> int:
    """Lines read in one round, ``chunks[i]`` (whole lines, each ending in a newline) for
    ``tallies[i]``: decoded by one call and counted in one loop. Returns how many.

    This runs once per delivery, so it does as little per line as it can: the
    decoder call, the join and the loop's set-up are paid once per round.
    """
    data = b"".join(chunks)
    try:
        events = decode_lines(data)
    except msgspec.DecodeError:  # some line is bad: decode one by one to count it
        return _one_by_one(tallies, chunks, stamp)
    if len(tallies) == 1:
        owners = tallies * len(events)
    elif data.count(b"\n") == len(chunks):  # a line each (every chunk ends in one)
        owners = tallies
    else:
        owners = []
        for tally, chunk in zip(tallies, chunks, strict=True):
            owners += [tally] * chunk.count(b"\n")
    if len(owners) != len(events):  # blank lines: the decoder skips them
        return _one_by_one(tallies, chunks, stamp)
    _account(owners, events, stamp)
    return len(events)


def _one_by_one(tallies: list[Tally], chunks: list[bytes], stamp: int) -> int:
    lines = 0
    for tally, chunk in zip(tallies, chunks, strict=True):
        events = []
        for raw in chunk.split(b"\n"):
            if not raw:
                continue
            lines += 1
            try:
                events.append(decode_line(raw))
            except msgspec.DecodeError:  # any undecodable line is a defect to count
                tally.garbled += 1
        _account([tally] * len(events), events, stamp)
    return lines


UNCOUNTED = -2
"""The sender :func:`_place` gives a text that is not a counted one."""
STRANGER = -1
"""The sender :func:`_place` gives a counted text that no sender of the phase sent."""


def _place(book: Book, text: str, stamp: int) -> tuple[int, int, int, int]:
    """``(sender, n, flat index, latency bucket µs)`` of a counted ``text`` received at
    ``stamp``; the sender is :data:`UNCOUNTED` or :data:`STRANGER` when there is none."""
    counted = parse_counted(text)
    if counted is None:
        return UNCOUNTED, 0, 0, 0
    sender, n, scheduled = counted
    planned = book.planned
    if not (0 <= sender < len(planned) and 0 <= n < planned[sender]):
        return STRANGER, 0, 0, 0
    return sender, n, book.offsets[sender] + n, hdr_value((stamp - scheduled) // 1000)


def _account(owners: list[Tally], events: list[Line], stamp: int, *, live: bool = True) -> None:
    """``events[i]``, received by ``owners[i]`` at ``stamp``; ``live`` False: no latency.

    Counted room messages are nearly all of the traffic: they are counted
    right here; other events go to :meth:`Tally._other`. A round brings the same
    message to many receivers, so each text is placed (:func:`_place`) once a round.
    """
    book: Book | None = None
    latency: dict[int, int] = {}
    slot = Slot()
    placed: dict[str, tuple[int, int, int, int]] = {}
    delivered = 0
    for tally, line in zip(owners, events, strict=True):
        tally.events += 1
        room = line.room
        if line.type != "message" or room is None or tally.book is None:
            tally._other(line, stamp)
            continue
        if tally.book is not book:
            if book is not None:
                _delivered(book, slot, delivered, stamp)
            book, delivered, placed = tally.book, 0, {}
            slot = book.slot(stamp)
            latency = slot.latency_us
        seq = line.seq
        room_seq = tally._room_seq
        last = room_seq.get(room)
        if last is not None and seq != last + 1:
            tally.seq_defects += 1
        room_seq[room] = seq
        text = line.text
        place = placed.get(text)
        if place is None:
            place = placed[text] = _place(book, text, stamp)
        sender, n, at, us = place
        if sender < 0:
            if sender == STRANGER:
                tally.strangers += 1
            continue
        counts = tally._counts
        if counts[at] < 255:
            counts[at] += 1
        highest = tally._highest
        if n < highest[sender]:
            tally.out_of_order += 1
        else:
            highest[sender] = n
        delivered += 1
        if live:
            latency[us] = latency.get(us, 0) + 1
    if book is not None:
        _delivered(book, slot, delivered, stamp)


def _delivered(book: Book, slot: Slot, count: int, stamp: int) -> None:
    if count:
        book.delivered += count
        book.last_receipt_ns = stamp
        slot.deliveries += count
