"""Open-loop counted traffic through a room, and the checks every scenario draws from it.

Theory of operation
-------------------
A phase sends ``total`` counted messages at ``rate`` per second, round-robin
over its senders: message ``i`` is *scheduled* at ``t0 + i / rate`` and goes
out when the clock says so, whatever happened to earlier ones (open loop), so
a server that falls behind shows up as latency, not as a politely slower
sender. Each sender is its own task: one blocked send delays only that
sender's later messages, and the delay is still measured from the schedule.

The phase then waits until every receiver has counted every message that was
actually sent, or until a deadline (``settle`` seconds after the last
scheduled send, longer for big runs), and hands back the :class:`Book`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import trio

from harness.context import Context
from harness.fleet import SEND_ERRORS, Fleet, Sim
from harness.meter import add_phase
from harness.model import ScenarioResult
from harness.outcome import Outcome, Usage, fell_behind, judge, latency_trend
from harness.tally import Arrivals, Book
from harness.wire import counted_text, now_ns

START_DELAY_NS = 50_000_000
"""The first message is scheduled this long after the phase starts (time to hand out orders)."""
DELIVERIES_PER_SECOND_FLOOR = 20_000
"""The settle time grows past ``--settle`` when a phase has more deliveries than this x settle."""


@dataclass
class Phase:
    label: str
    book: Book
    senders: list[Sim]
    receivers: list[Sim]
    started_ns: int
    complete: bool = False
    closed: int = 0
    """Receivers the server closed during the phase (see :class:`~harness.tally.Arrivals`)."""
    send_failures: int = 0
    max_send_lag_ms: float = 0.0
    title: str = ""
    usage: Usage = field(default_factory=Usage)

    def outcome(self) -> Outcome:
        """What this phase's receivers saw."""
        return judge(
            self.book,
            [sim.tally for sim in self.receivers],
            judged_sent=self.book.sent,
            own_sent=self.book.sent,
            complete=self.complete,
            closed=self.closed,
            send_failures=self.send_failures,
            max_send_lag_ms=self.max_send_lag_ms,
            usage=self.usage,
        )


def plan(total: int, senders: int) -> list[int]:
    """Messages per sender when ``total`` go round-robin over ``senders``."""
    return [total // senders + (1 if j < total % senders else 0) for j in range(senders)]


async def run_phase(
    ctx: Context,
    scenario: str,
    label: str,
    room: str,
    senders: list[Sim],
    receivers: list[Sim],
    total: int,
    *,
    rate: float | None = None,
    extra_settle: float = 0.0,
) -> Phase:
    """Send ``total`` counted messages at ``rate`` (default ``--rate``) and wait for them.

    ``extra_settle`` adds time for work the phase itself causes beyond delivery,
    such as reconnecting clients catching up.
    """
    rate = rate or ctx.options.send_rate()
    started_ns = now_ns() + START_DELAY_NS
    book = Book(plan(total, len(senders)), started_ns)
    for sim in receivers:
        sim.tally.follow(book)
    phase = Phase(label, book, senders, receivers, started_ns=started_ns)
    phase.title = f"{scenario}: {label or 'traffic'}"
    async with trio.open_nursery() as nursery:
        for j, sim in enumerate(senders):
            nursery.start_soon(_send_series, phase, room, j, sim, rate)
        wait = phase_wait_s(ctx, total, len(receivers), rate) + extra_settle
        deadline = trio.current_time() + wait
        phase.complete = await _await_deliveries(ctx, phase, nursery, deadline)
        nursery.cancel_scope.cancel()
    return phase


def phase_wait_s(ctx: Context, total: int, receivers: int, rate: float) -> float:
    """How long a phase may take: its schedule, then ``--settle`` for stragglers (more when
    it has more deliveries than :data:`DELIVERIES_PER_SECOND_FLOOR` x ``--settle``)."""
    settle = max(ctx.options.settle, total * receivers / DELIVERIES_PER_SECOND_FLOOR)
    return total / rate + settle


async def _send_series(phase: Phase, room: str, j: int, sim: Sim, rate: float) -> None:
    count = len(phase.senders)
    for k in range(phase.book.planned[j]):
        scheduled = phase.started_ns + int((k * count + j) * 1e9 / rate)
        delay = (scheduled - now_ns()) / 1e9
        if delay > 0:
            await trio.sleep(delay)
        if sim.client is None or not sim.alive:
            return
        try:
            await sim.client.say(room, counted_text(j, k, scheduled))
        except SEND_ERRORS:
            phase.send_failures += 1
            return
        phase.book.sent[j] += 1
        phase.max_send_lag_ms = max(phase.max_send_lag_ms, (now_ns() - scheduled) / 1e6)


async def _await_deliveries(
    ctx: Context, phase: Phase, senders: trio.Nursery, deadline: float
) -> bool:
    planned = sum(phase.book.planned) * len(phase.receivers)
    arrivals = Arrivals(phase.book, phase.receivers)
    try:
        while True:
            ctx.progress(phase.title, phase.book.delivered, planned)
            sending = bool(senders.child_tasks)
            sent = sum(phase.book.sent)
            # Asked on every poll, so that ``closed`` is current however the wait ends.
            if arrivals.all_in(sent) and not sending:
                return arrivals.complete(sent)
            if trio.current_time() > deadline:
                return False
            await trio.sleep(0.05)
    finally:
        phase.closed = arrivals.closed


# --- checks -----------------------------------------------------------------------


def delivery_checks(result: ScenarioResult, phase: Phase, who: str = "every client") -> None:
    """Exactly once, in order, nothing else wrong; the phase's figures."""
    outcome_checks(result, phase.label, phase.outcome(), who)


def outcome_checks(
    result: ScenarioResult, label: str, outcome: Outcome, who: str = "every client"
) -> None:
    """:func:`delivery_checks` of a phase's (possibly merged) outcome."""
    sent = sum(outcome.sent)
    planned = sum(outcome.planned)
    prefix = f"{label}: " if label else ""
    result.check(
        f"{prefix}exactly once",
        f"{who} receives each of the messages sent exactly once (lost = 0, duplicated = 0)",
        outcome.lost == 0
        and outcome.duplicated == 0
        and outcome.strangers == 0
        and outcome.complete,
        f"{sent} sent x {outcome.receivers} receivers: lost {outcome.lost},"
        f" duplicated {outcome.duplicated}, unknown {outcome.strangers}{_shortfall(outcome)}",
    )
    result.check(
        f"{prefix}in order",
        "per-sender order kept and room seq strictly consecutive (no gap, no repeat)",
        outcome.out_of_order == 0 and outcome.seq_defects == 0 and outcome.garbled == 0,
        f"out of order {outcome.out_of_order}, seq defects {outcome.seq_defects},"
        f" undecodable lines {outcome.garbled}",
    )
    result.check(
        f"{prefix}all sends accepted",
        "every scheduled message was sent, and no receiver got an error",
        outcome.send_failures == 0 and sent == planned and not outcome.errors,
        f"sent {sent}/{planned}, send failures {outcome.send_failures},"
        f" errors {outcome.errors or 'none'}",
    )
    key = f"{label}_" if label else ""
    result.figures.update(outcome.latency.figures(key))
    result.figures[f"{key}deliveries"] = outcome.delivered
    result.figures[f"{key}deliveries_per_s"] = round(
        outcome.delivered / outcome.elapsed_s(now_ns())
    )
    result.figures[f"{key}max_send_lag_ms"] = round(outcome.max_send_lag_ms, 2)
    result.timelines[label or "traffic"] = outcome.timeline
    add_phase(outcome)
    _trend(result, label, outcome)
    _closed(result, label, outcome)


def _shortfall(outcome: Outcome) -> str:
    """Why the wait for deliveries ended short, if it did."""
    if outcome.closed:
        return f" (the server closed {outcome.closed} of them)"
    return "" if outcome.complete else " (deadline passed)"


def _closed(result: ScenarioResult, label: str, outcome: Outcome) -> None:
    """Say so when the server closed receivers mid-phase: their losses are that closing."""
    if outcome.closed:
        result.notes.append(
            f"{label or 'traffic'}: the server closed {outcome.closed} of"
            f" {outcome.receivers} receivers during the phase, so what they had not yet"
            f" received is lost; a server drops readers that fall behind (triochat evicts"
            f" them as slow_consumer), and the harness's busiest process used"
            f" {outcome.busiest_share:.0%} of a core: near 100%, the harness was that reader"
        )


def _trend(result: ScenarioResult, label: str, outcome: Outcome) -> None:
    """Say so when latency grew through the phase: the offered rate was not sustained."""
    trend = latency_trend(outcome)
    if trend is None:
        return
    start, end = trend
    key = f"{label}_" if label else ""
    result.figures[f"{key}start_p50_ms"] = round(start, 2)
    result.figures[f"{key}end_p50_ms"] = round(end, 2)
    behind = fell_behind(start, end)
    result.figures[f"{key}kept_up"] = "no" if behind else "yes"
    if behind:
        result.notes.append(
            f"{label or 'traffic'}: latency grew from a median of {start:.0f} ms (first third)"
            f" to {end:.0f} ms (last third): messages queued up all along, so the offered"
            f" rate was more than was sustained (the server's, or the harness's if"
            f" harness_cpu_share is near 1); these latencies measure that queue"
        )


async def open_members(
    ctx: Context, fleet: Fleet, scenario: str, room: str, count: int
) -> list[Sim]:
    """Connect the scenario's ``count`` numbered members to ``room``, showing progress."""
    ctx.progress(f"{scenario}: connecting {count}", 0, count)
    return await fleet.open([ctx.nick(scenario, str(i)) for i in range(count)], [room])


def connect_check(result: ScenarioResult, sims: list[Sim]) -> bool:
    failed = [sim for sim in sims if sim.client is None]
    first = failed[0].failure if failed else None
    return connect_check_counts(result, len(sims) - len(failed), len(sims), first)


def connect_check_counts(
    result: ScenarioResult, connected: int, wanted: int, first_failure: str | None
) -> bool:
    first = f"; first failure: {first_failure}" if connected < wanted else ""
    return result.check(
        "all connected",
        "every simulated client connects and is welcomed",
        connected == wanted,
        f"{connected}/{wanted} connected{first}",
    )


def latency_bound_ms(baseline_p99_ms: float) -> float:
    """The p99 a fault phase may reach: 5x the no-fault p99, or it + 250 ms, whichever is more."""
    return max(5 * baseline_p99_ms, baseline_p99_ms + 250.0)


def latency_check(result: ScenarioResult, baseline: Outcome, fault: Outcome) -> None:
    """The fault phase's p99 against the no-fault phase's, run just before it."""
    base = baseline.latency.ms(99)
    fault_latency = fault.latency
    seen = fault_latency.ms(99)
    bound = latency_bound_ms(base)
    measured = fault.complete and fault_latency.count > 0
    result.check(
        "latency unaffected",
        "others' p99 <= max(5 x no-fault p99, no-fault p99 + 250 ms), every message measured",
        measured and seen <= bound and not math.isnan(seen),
        f"p99 {seen:.1f} ms vs no-fault {base:.1f} ms (bound {bound:.1f} ms)",
    )
