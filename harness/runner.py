"""One harness run: check the target is there, run each scenario, collect the report."""

from __future__ import annotations

import trio

from harness.context import Context, Progress
from harness.fleet import Unreachable
from harness.model import Report, ScenarioResult
from harness.options import Options
from harness.registry import SCENARIOS
from triochat.client import open_client, parse_url
from triochat.errors import ConnectError, Rejected

PROBE_TIMEOUT = 10.0


def _quiet(description: str, completed: float, total: float) -> None:
    pass


async def run_harness(
    options: Options,
    progress: Progress = _quiet,
    on_result: object = None,
) -> Report:
    """Run ``options.scenarios`` in order; :class:`Unreachable` if the target is not there."""
    ctx = Context(options, progress=progress)
    report = Report(target=_describe(options), clients=options.clients, settings=_settings(options))
    for url in options.urls:
        await _probe(ctx, url)
    for name in options.scenarios:
        proves, run = SCENARIOS[name]
        result = ScenarioResult(name, proves)
        started = trio.current_time()
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
        result.seconds = trio.current_time() - started
        report.scenarios.append(result)
        if callable(on_result):
            on_result(result)
    return report


async def _probe(ctx: Context, url: str) -> None:
    """Fail fast, with one line, when a ``--url`` cannot be reached."""
    try:
        parse_url(url)
        async with open_client(url, ctx.nick("probe", "0"), connect_timeout=PROBE_TIMEOUT):
            pass
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
    if options.transport == "ws":
        return f"in-process server (ws, --ws-engine {options.ws_engine})"
    return f"in-process server ({options.transport})"


def _settings(options: Options) -> dict[str, int | float | str]:
    return {
        "clients": options.clients,
        "messages_per_client": options.messages_per_client(),
        "rate_per_s": round(options.send_rate(), 2),
        "fault_messages": options.fault_messages(),
        "duration_s": options.duration,
        "evict_within_s": options.evict_within,
        "settle_s": options.settle,
        "seed": "random" if options.seed is None else options.seed,
        "scenarios": ",".join(options.scenarios),
        "transport": "urls" if options.urls else options.transport,
    }
