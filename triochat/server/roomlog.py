"""A room's recent past: the encoded lines of its last ``retention`` room events,
as many of them as fit in ``max_bytes``.

Every room event gets the next ``seq`` and is appended here, so the retained
events always have consecutive sequence numbers and a ``seq`` maps to a list
index by subtraction. The oldest retained event is ``_oldest``: it moves on
when the count or the bytes pass their bound (the newest event is always
kept). Lines before it are dropped in one slice once they are as many as the
lines kept, so trimming is amortised.

Bytes are counted as memory, not as wire: each line costs its length plus
:data:`LINE_COST`, so a bound holds for a room of many short lines too.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Protocol

LINE_COST = sys.getsizeof(b"") + 8
"""What a retained line costs beyond its length: the bytes object's header and its
slot in the list."""


class RowLike(Protocol):
    @property
    def seq(self) -> int: ...
    @property
    def line(self) -> bytes: ...


class RoomLog:
    def __init__(self, retention: int, *, max_bytes: float = math.inf, last_seq: int = 0) -> None:
        self._retention = max(retention, 1)
        self._max_bytes = max_bytes
        self._lines: list[bytes] = []
        self._first_seq = last_seq + 1
        """The seq of ``_lines[0]``, or of the next event when empty."""
        self._oldest = last_seq + 1
        """The seq of the oldest retained line; lines before it are trimmed soon."""
        self._bytes = 0
        """Memory of the retained lines (see :data:`LINE_COST`)."""

    @classmethod
    def restore(
        cls,
        retention: int,
        rows: Sequence[RowLike],
        *,
        max_bytes: float = math.inf,
        last_seq: int = 0,
    ) -> RoomLog:
        """A log holding ``rows`` (consecutive seqs, oldest first) and continuing after
        them, or after ``last_seq`` when there are none."""
        log = cls(retention, max_bytes=max_bytes, last_seq=rows[0].seq - 1 if rows else last_seq)
        for row in rows:
            log.append(row.seq, row.line)
        return log

    @property
    def next_seq(self) -> int:
        return self._first_seq + len(self._lines)

    @property
    def last_seq(self) -> int:
        return self.next_seq - 1

    @property
    def retained_bytes(self) -> int:
        """The memory the retained lines take (see :data:`LINE_COST`)."""
        return self._bytes

    def append(self, seq: int, line: bytes) -> None:
        if seq != self.next_seq:
            raise ValueError(f"seq {seq} out of order, expected {self.next_seq}")
        self._lines.append(line)
        self._bytes += len(line) + LINE_COST
        if seq - self._oldest >= self._retention or self._bytes > self._max_bytes:
            self._trim(self._max_bytes)

    def shrink(self, max_bytes: float) -> None:
        """Drop the oldest lines until the rest take at most ``max_bytes`` (the newest stays)."""
        self._trim(max_bytes)

    def _trim(self, max_bytes: float) -> None:
        lines, last = self._lines, self.last_seq
        while self._oldest < last and (
            last - self._oldest >= self._retention or self._bytes > max_bytes
        ):
            self._bytes -= len(lines[self._oldest - self._first_seq]) + LINE_COST
            self._oldest += 1
        trimmed = self._oldest - self._first_seq
        if trimmed >= len(lines) - trimmed:
            del lines[:trimmed]
            self._first_seq = self._oldest

    def before(self, seq: int | None, limit: int) -> list[bytes]:
        """Up to ``limit`` retained lines with a seq below ``seq`` (all when None), oldest first."""
        end = self._index(self.next_seq if seq is None else seq)
        start = max(end - limit, self._index(self._oldest))
        return self._lines[start:end]

    def between(self, after: int, before: int) -> list[bytes]:
        """Retained lines with ``after < seq < before``, oldest first."""
        start = max(self._index(after + 1), self._index(self._oldest))
        return self._lines[start : self._index(before)]

    def page(
        self, after: int, before: int, max_events: int, max_bytes: int
    ) -> tuple[int, list[bytes]]:
        """The oldest retained lines with ``after < seq < before``: at most ``max_events``
        of them, adding up to at most ``max_bytes`` (but never none if there is one).

        Returns the seq of the page's last line (``after`` when empty) and the lines.
        """
        start = max(self._index(after + 1), self._index(self._oldest))
        end = min(self._index(before), start + max_events)
        lines = self._lines
        total = 0
        stop = start
        while stop < end:
            total += len(lines[stop])
            if total > max_bytes and stop > start:
                break
            stop += 1
        if stop == start:
            return after, []
        return self._first_seq + stop - 1, lines[start:stop]

    def _index(self, seq: int) -> int:
        return min(max(seq - self._first_seq, 0), len(self._lines))
