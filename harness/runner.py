"""One harness run: check the target is there, run each scenario, collect the report.

A signal named in ``stop_on`` (the command line passes SIGINT and SIGTERM)
cancels the work in hand; the report then holds the scenarios that finished
and says which one was cut short, and :func:`run_harness` returns it as usual.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Callable, Collection
from dataclasses import replace

import trio

from harness.context import Context, Progress
from harness.fleet import Unreachable, quit_and_wait
from harness.meter import METER, SATURATED_SHARE, Meter
from harness.model import Interruption, Report, ScenarioResult
from harness.options import Options
from harness.registry import SCENARIOS, SHARDED
from harness.trust import CAFILE, open_client
from triochat.client import parse_url
from triochat.errors import ConnectError, Rejected

PROBE_TIMEOUT = 10.0
SEED_RANGE = 2**32
"""A seed the harness picks itself is below this (short enough to type back)."""


def _quiet(description: str, completed: float, total: float) -> None:
    pass


def with_seed(options: Options) -> Options:
    """``options`` with a seed: the one given, or a fresh one (reported, so it can be replayed)."""
    if options.seed is not None:
        return options
    return replace(options, seed=random.SystemRandom().randrange(SEED_RANGE))


async def run_harness(
    options: Options,
    progress: Progress = _quiet,
    on_result: Callable[[ScenarioResult], None] | None = None,
    *,
    stop_on: Collection[signal.Signals] = (),
) -> Report:
    """Run ``options.scenarios`` in order; :class:`Unreachable` if the target is not there."""
    options = with_seed(options)
    trusted = CAFILE.set(options.cafile)  # inherited by every task the run starts
    try:
        return await _run_harness(options, progress, on_result, stop_on)
    finally:
        CAFILE.reset(trusted)


async def _run_harness(
    options: Options,
    progress: Progress,
    on_result: Callable[[ScenarioResult], None] | None,
    stop_on: Collection[signal.Signals],
) -> Report:
    ctx = Context(options, progress=progress)
    assert options.seed is not None  # with_seed gave it one
    report = Report(
        target=_describe(options),
        clients=options.clients,
        settings=_settings(options),
        run_id=ctx.run_id,
        seed=options.seed,
        workers=options.workers,
    )
    running: list[str | None] = [None]
    """The scenario in hand, for the signal watcher to name."""
    work = trio.CancelScope()
    unreachable: Unreachable | None = None
    async with trio.open_nursery() as nursery:
        if stop_on:
            await nursery.start(_watch, stop_on, work, report, running)
        with work:
            try:
                await _run_all(ctx, report, running, on_result)
            except Unreachable as exc:  # raised bare below, not inside the nursery's group
                unreachable = exc
        nursery.cancel_scope.cancel()
    if unreachable is not None:
        raise unreachable
    return report


async def _run_all(
    ctx: Context,
    report: Report,
    running: list[str | None],
    on_result: Callable[[ScenarioResult], None] | None,
) -> None:
    for url in ctx.options.urls:
        await _probe(ctx, url)
    for name in ctx.options.scenarios:
        running[0] = name
        result = await _run_one(ctx, name)
        if report.interrupted is not None:
            return  # cut short: whatever it recorded is incomplete
        report.scenarios.append(result)
        if on_result is not None:
            on_result(result)


async def _run_one(ctx: Context, name: str) -> ScenarioResult:
    proves, run = SCENARIOS[name]
    result = ScenarioResult(name, proves)
    started = trio.current_time()
    meter = Meter()
    metering = METER.set(meter)  # inherited by the tasks the scenario starts
    try:
        await run(ctx, result)
    except Exception as exc:  # a scenario's own crash is a failed check, never a traceback
        unreachable = _find_unreachable(exc)
        if unreachable is not None:
            raise unreachable from None
        result.check(
            "ran to completion",
            "the scenario finishes without an internal error",
            False,
            _describe_exc(exc),
        )
    finally:
        METER.reset(metering)
    result.seconds = trio.current_time() - started
    _record_usage(ctx.options, result, meter)
    return result


def _record_usage(options: Options, result: ScenarioResult, meter: Meter) -> None:
    figures = meter.figures()
    result.figures.update(figures)
    share = figures["harness_cpu_share"]
    if share < SATURATED_SHARE:
        return
    sharded = result.name in SHARDED and options.workers > 1
    if options.own_server and not sharded:
        why = "; it also runs the server under test (with --url the server runs apart)"
    elif result.name in SHARDED:
        why = "; more --workers, or fewer clients, would tell"
    else:
        why = ""
    result.notes.append(
        f"the harness was near saturation (its busiest process used {share:.0%} of a core):"
        f" its latencies describe the harness as much as the server{why}"
    )


async def _watch(
    signals: Collection[signal.Signals],
    work: trio.CancelScope,
    report: Report,
    running: list[str | None],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """On the first signal, record it and cancel ``work``; later ones change nothing.

    The receiver stays open until the run ends, so a second Ctrl-C during the
    (bounded) clean-up cannot turn into a KeyboardInterrupt traceback.
    """
    with trio.open_signal_receiver(*signals) as received:
        task_status.started()
        async for signum in received:
            if report.interrupted is None:
                sig = signal.Signals(signum)
                report.interrupted = Interruption(sig.name, int(sig), running[0])
                work.cancel()


async def _probe(ctx: Context, url: str) -> None:
    """Fail fast, with one line, when a ``--url`` cannot be reached."""
    try:
        parse_url(url)
        async with open_client(
            url, ctx.nick("probe", "0"), connect_timeout=PROBE_TIMEOUT
        ) as client:
            await quit_and_wait(client)
    except (ConnectError, Rejected) as exc:
        raise Unreachable(str(exc)) from None


def _find_unreachable(exc: BaseException) -> Unreachable | None:
    if isinstance(exc, Unreachable):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find_unreachable(inner)
            if found is not None:
                return found
    return None


def _describe_exc(exc: BaseException) -> str:
    leaves = list(_leaves(exc))
    kinds = sorted({type(leaf).__name__ for leaf in leaves})
    first = leaves[0] if leaves else exc
    return f"{len(leaves)} x {'/'.join(kinds)}, e.g. {type(first).__name__}: {first}"


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _describe(options: Options) -> str:
    if options.urls:
        return ", ".join(options.urls)
    return f"in-process server ({options.transport})"


def _settings(options: Options) -> dict[str, int | float | str]:
    return {
        "clients": options.clients,
        "messages_per_client": options.messages_per_client(),
        "rate_per_s": round(options.send_rate(), 2),
        "fault_messages": options.fault_messages(),
        "duration_s": options.duration if options.duration is not None else "none",
        "broadcast_messages": options.broadcast_messages(),
        "workers": options.workers,
        "evict_within_s": options.evict_within,
        "settle_s": options.settle,
        "seed": options.seed if options.seed is not None else 0,
        "scenarios": ",".join(options.scenarios),
        "transport": "urls" if options.urls else options.transport,
    }
