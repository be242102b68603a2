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

from collections import Counter
from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram

from harness.wire import Line, decode_line, now_ns, parse_counted

HIGHEST_US = 600_000_000
"""Latencies are recorded in microseconds up to 10 minutes (longer ones are clamped)."""


class Latency:
    """Delivery latency from scheduled send to receipt, as an HdrHistogram."""

    def __init__(self) -> None:
        self._hist = HdrHistogram(1, HIGHEST_US, 3)

    def record_ns(self, ns: int) -> None:
        self._hist.record_value(min(max(ns // 1000, 1), HIGHEST_US))

    @property
    def count(self) -> int:
        return int(self._hist.get_total_count())

    def ms(self, percentile: float) -> float:
        if not self.count:
            return 0.0
        return float(self._hist.get_value_at_percentile(percentile)) / 1000

    def max_ms(self) -> float:
        return float(self._hist.get_max_value()) / 1000 if self.count else 0.0

    def figures(self, prefix: str = "") -> dict[str, float]:
        return {
            f"{prefix}p50_ms": round(self.ms(50), 2),
            f"{prefix}p95_ms": round(self.ms(95), 2),
            f"{prefix}p99_ms": round(self.ms(99), 2),
            f"{prefix}max_ms": round(self.max_ms(), 2),
        }


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
    sent: list[int] = field(init=False)
    latency: Latency = field(default_factory=Latency)
    delivered: int = 0
    """Counted messages received, by all receivers together."""
    last_receipt_ns: int = 0

    def __post_init__(self) -> None:
        self.sent = [0] * len(self.planned)


class Tally:
    """One receiver's exact account of what arrived."""

    def __init__(self) -> None:
        self.book: Book | None = None
        self._counts: dict[int, bytearray] = {}
        self._highest: dict[int, int] = {}
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
        self.events = 0

    def follow(self, book: Book) -> None:
        """Count the counted messages of ``book``'s phase from now on."""
        self.book = book
        self._counts = {}
        self._highest = {}

    # --- receiving ------------------------------------------------------------

    def take(self, lines: list[bytes]) -> None:
        stamp = now_ns()
        for raw in lines:
            try:
                line = decode_line(raw)
            except Exception:  # any undecodable line is a defect to count, not a crash
                self.garbled += 1
                continue
            self.take_line(line, stamp)

    def take_line(self, line: Line, stamp: int, *, replayed: bool = False) -> None:
        """Account for one decoded event received at ``stamp``.

        ``replayed``: it came from a ``history`` replay, so it counts and is
        checked like a live event, but its latency (it waited for a
        reconnection) does not go into the histogram.
        """
        self.events += 1
        kind = line.type
        if kind in ("message", "joined", "left") and line.room is not None:
            self._room_event(line.room, line.seq)
        if kind == "message":
            self._message(line.text, stamp, replayed)
        elif kind == "left":
            self.lefts.append(Leaving(line.room or "", line.nick, line.reason, stamp))
        elif kind == "joined":
            self.joined[line.nick] += 1
        elif kind == "error":
            self.errors[line.code] += 1
            self.error_codes.append(line.code)
        elif kind == "ack":
            self.acks += 1
        elif kind == "members":
            self.members[line.room] = line.nicks or []
            self.members_replies += 1

    def _room_event(self, room: str, seq: int) -> None:
        last = self._room_seq.get(room)
        if last is not None and seq != last + 1:
            self.seq_defects += 1
        self._room_seq[room] = seq

    def _message(self, text: str, stamp: int, replayed: bool = False) -> None:
        counted = parse_counted(text)
        book = self.book
        if counted is None or book is None:
            return
        sender, n, scheduled = counted
        if not 0 <= sender < len(book.planned) or not 0 <= n < book.planned[sender]:
            self.strangers += 1
            return
        counts = self._counts.get(sender)
        if counts is None:
            counts = self._counts[sender] = bytearray(book.planned[sender])
        if counts[n] < 255:
            counts[n] += 1
        if n < self._highest.get(sender, -1):
            self.out_of_order += 1
        else:
            self._highest[sender] = n
        book.delivered += 1
        book.last_receipt_ns = stamp
        if not replayed:
            book.latency.record_ns(stamp - scheduled)

    # --- verdicts --------------------------------------------------------------

    def lost_and_duplicated(self, sent: list[int], senders: range | list[int]) -> tuple[int, int]:
        """Messages of ``senders`` (as ``sent``) this receiver never got, and extra copies."""
        lost = dup = 0
        for sender in senders:
            counts = self._counts.get(sender, bytearray())
            got = counts[: sent[sender]]
            lost += sent[sender] - (len(got) - got.count(0))
            dup += sum(counts) - (len(counts) - counts.count(0))
        return lost, dup

    def received(self) -> int:
        """Counted messages of the current phase received, copies included."""
        return sum(sum(counts) for counts in self._counts.values())

    def last_seq(self, room: str) -> int | None:
        """The ``seq`` of the last room event of ``room`` received (None: none yet)."""
        return self._room_seq.get(room)

    def left_of(self, nick: str) -> list[Leaving]:
        return [left for left in self.lefts if left.nick == nick]
