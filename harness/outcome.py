"""What one traffic phase came to, in a form that travels between processes and adds up.

A phase's receivers may live in several worker processes (``--workers``). Each
sums its own receivers into an :class:`Outcome`; the coordinator adds the
outcomes (:func:`merge`) and the checks read the sum, so every check sees the
whole picture. Every field is a count, a maximum or a timeline of counts, so
the sum is exact: nothing is averaged or sampled.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field

import msgspec

from harness.tally import Book, Latency, Slot, Tally, merge_timelines, timeline_latency


def _kernel_s() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


@dataclass
class Usage:
    """This process's CPU and wall clock since it was made (the start of a phase)."""

    cpu_start: float = field(default_factory=time.process_time)
    kernel_start: float = field(default_factory=_kernel_s)
    wall_start: float = field(default_factory=time.perf_counter)

    def cpu_s(self) -> float:
        return time.process_time() - self.cpu_start

    def kernel_s(self) -> float:
        """The part of :meth:`cpu_s` spent in the kernel, on the process's system calls."""
        return _kernel_s() - self.kernel_start

    def share(self) -> float:
        return min(self.cpu_s() / max(time.perf_counter() - self.wall_start, 1e-9), 1.0)


class Outcome(msgspec.Struct, kw_only=True, tag=True):
    planned: list[int]
    """Messages each sender index was to send."""
    sent: list[int]
    receivers: int
    started_ns: int
    """When the first message was scheduled (the phase's clock and timeline origin)."""
    complete: bool = True
    """Every receiver counted every sent message before the deadline."""
    closed: int = 0
    """Receivers whose connection the server ended before the judgement: what they
    lacked then is lost (the wait for deliveries stopped counting on them)."""
    send_failures: int = 0
    max_send_lag_ms: float = 0.0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    seq_defects: int = 0
    strangers: int = 0
    garbled: int = 0
    errors: dict[str, int] = msgspec.field(default_factory=dict)
    delivered: int = 0
    last_receipt_ns: int = 0
    timeline: dict[int, Slot] = msgspec.field(default_factory=dict)
    cpu_s: float = 0.0
    """CPU the harness spent on the phase: every process that took part, together."""
    kernel_s: float = 0.0
    """The part of ``cpu_s`` spent in the kernel: reads, and the ACKs they send, are
    most of it where each read brings one line."""
    busiest_share: float = 0.0
    """The busiest of those processes' CPU time over the phase's wall time."""
    fewest: int = 0
    most: int = 0
    """The counted messages of the receiver that got the fewest, and the most (copies
    included): every receiver got exactly what was sent when both equal it."""
    reads: int = 0
    lines_read: int = 0
    """The lean clients' reads that brought lines during the phase, and the lines they
    brought (0: only the client library's clients, which do not count theirs). The more
    lines a read brings, the less each costs."""

    @property
    def latency(self) -> Latency:
        return timeline_latency(self.timeline)

    def elapsed_s(self, now_ns: int) -> float:
        end = self.last_receipt_ns or now_ns
        return max(end - self.started_ns, 1) / 1e9


GROWTH_FACTOR = 2.0
GROWTH_FLOOR_MS = 100.0
"""Latency at the end of a phase above both ``GROWTH_FACTOR`` x and ``GROWTH_FLOOR_MS`` more
than at its start: the receivers' queue grew all along, the offered rate was not sustained."""


def latency_trend(outcome: Outcome) -> tuple[float, float] | None:
    """Median latency of the first and of the last third of the phase (by receipt time).

    None when the phase is too short to have thirds (fewer than 3 slots with latency).
    """
    slots = [slot for _, slot in sorted(outcome.timeline.items()) if slot.latency_us]
    third = len(slots) // 3
    if not third:
        return None
    first, last = Latency(), Latency()
    for slot in slots[:third]:
        first.add_counts(slot.latency_us)
    for slot in slots[-third:]:
        last.add_counts(slot.latency_us)
    return first.ms(50), last.ms(50)


def fell_behind(start_ms: float, end_ms: float) -> bool:
    return end_ms > max(GROWTH_FACTOR * start_ms, start_ms + GROWTH_FLOOR_MS)


def merge(parts: list[Outcome]) -> Outcome:
    """The outcome of all receivers of ``parts`` (one phase, split over processes).

    ``sent`` is per sender: each part counts the senders it ran, so they add up.
    """
    first = parts[0]
    receiving = any(p.receivers for p in parts)
    errors: dict[str, int] = {}
    for part in parts:
        for code, count in part.errors.items():
            errors[code] = errors.get(code, 0) + count
    return Outcome(
        planned=first.planned,
        sent=[sum(column) for column in zip(*(p.sent for p in parts), strict=True)],
        receivers=sum(p.receivers for p in parts),
        started_ns=first.started_ns,
        complete=all(p.complete for p in parts),
        closed=sum(p.closed for p in parts),
        send_failures=sum(p.send_failures for p in parts),
        max_send_lag_ms=max(p.max_send_lag_ms for p in parts),
        lost=sum(p.lost for p in parts),
        duplicated=sum(p.duplicated for p in parts),
        out_of_order=sum(p.out_of_order for p in parts),
        seq_defects=sum(p.seq_defects for p in parts),
        strangers=sum(p.strangers for p in parts),
        garbled=sum(p.garbled for p in parts),
        errors=errors,
        delivered=sum(p.delivered for p in parts),
        last_receipt_ns=max(p.last_receipt_ns for p in parts),
        timeline=merge_timelines([p.timeline for p in parts]),
        cpu_s=sum(p.cpu_s for p in parts),
        kernel_s=sum(p.kernel_s for p in parts),
        busiest_share=max(p.busiest_share for p in parts),
        fewest=min(p.fewest for p in parts if p.receivers) if receiving else 0,
        most=max(p.most for p in parts if p.receivers) if receiving else 0,
        reads=sum(p.reads for p in parts),
        lines_read=sum(p.lines_read for p in parts),
    )


def judge(
    book: Book,
    tallies: list[Tally],
    *,
    judged_sent: list[int],
    own_sent: list[int],
    complete: bool,
    closed: int = 0,
    send_failures: int,
    max_send_lag_ms: float,
    usage: Usage,
    reads: tuple[int, int] = (0, 0),
) -> Outcome:
    """What ``tallies`` (one process's receivers of ``book``'s phase) saw.

    Lost and duplicated are judged against ``judged_sent``, every sender's
    count; the outcome's ``sent`` is ``own_sent``, this process's senders' part,
    so that outcomes of several processes add up. ``reads``: the lean clients' reads
    during the phase, and the lines they brought.
    """
    senders = range(len(book.planned))
    lost = dup = 0
    errors: dict[str, int] = {}
    for tally in tallies:
        tally_lost, tally_dup = tally.lost_and_duplicated(judged_sent, senders)
        lost, dup = lost + tally_lost, dup + tally_dup
        for code, count in tally.errors.items():
            errors[code] = errors.get(code, 0) + count
    received = [tally.received() for tally in tallies]
    return Outcome(
        planned=list(book.planned),
        sent=list(own_sent),
        receivers=len(tallies),
        started_ns=book.started_ns,
        complete=complete,
        closed=closed,
        send_failures=send_failures,
        max_send_lag_ms=max_send_lag_ms,
        lost=lost,
        duplicated=dup,
        out_of_order=sum(t.out_of_order for t in tallies),
        seq_defects=sum(t.seq_defects for t in tallies),
        strangers=sum(t.strangers for t in tallies),
        garbled=sum(t.garbled for t in tallies),
        errors=errors,
        delivered=book.delivered,
        last_receipt_ns=book.last_receipt_ns,
        timeline=dict(sorted(book.timeline.items())),
        cpu_s=round(usage.cpu_s(), 4),
        kernel_s=round(usage.kernel_s(), 4),
        busiest_share=round(usage.share(), 4),
        fewest=min(received, default=0),
        most=max(received, default=0),
        reads=reads[0],
        lines_read=reads[1],
    )
