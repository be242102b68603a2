"""What a person sees: a progress line while the harness runs, a summary at the end.

The summary reads at a glance: one row per scenario (verdict and key figures),
then, only when something failed, each failed check with its criterion and
what was observed, right above the verdict line. ``--verbose`` adds every
check and every figure (the JSON report always has them).
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from harness.model import Check, Figure, Report, ScenarioResult

MARKS = {True: "[green]pass[/]", False: "[bold red]FAIL[/]", None: "[yellow]skip[/]"}


class Display:
    """One progress bar, re-labelled for each step; silent when ``quiet``."""

    def __init__(self, console: Console, quiet: bool) -> None:
        self.console = console
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=quiet,
        )
        self._task = self._progress.add_task("starting", total=1)

    def __enter__(self) -> Display:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, description: str, completed: float, total: float) -> None:
        self._progress.update(
            self._task, description=description, completed=completed, total=max(total, 1)
        )

    def scenario_done(self, result: ScenarioResult) -> None:
        mark = MARKS[result.passed]
        self._progress.console.print(f"{mark} {result.name} ({result.seconds:.1f} s)")


def render(console: Console, report: Report, *, verbose: bool = False) -> None:
    console.print(_summary_table(report))
    if verbose:
        console.print(_checks_table(report))
        console.print(_figures_table(report))
    for note in report.notes:
        console.print(f"note: {note}")
    for scenario in report.scenarios:
        for note in scenario.notes:
            console.print(f"note ({scenario.name}): {note}")
    _print_failures(console, report)
    console.print(_verdict(report), soft_wrap=True)  # one line, for grep and tail


def _verdict(report: Report) -> str:
    if report.interrupted is not None:
        verdict = f"[bold yellow]INTERRUPTED[/]: {interruption_line(report)}"
    elif report.passed:
        verdict = "[bold green]all checks passed[/]"
    else:
        verdict = "[bold red]FAILED[/]"
    seed = report.settings.get("seed")
    return (
        f"{verdict} — {report.crowd} against {report.target},"
        f" seed {seed} (replay with --seed {seed})"
    )


def interruption_line(report: Report) -> str:
    """``interrupted during scenario churn (1 of 2 scenarios finished)``, for a person."""
    stop = report.interrupted
    assert stop is not None
    how = "interrupted" if stop.signal == "SIGINT" else f"stopped by {stop.signal}"
    where = f"during scenario {stop.during}" if stop.during else "before the first scenario"
    planned = len(str(report.settings.get("scenarios", "")).split(","))
    return f"{how} {where} ({len(report.scenarios)} of {planned} scenarios finished)"


def _summary_table(report: Report) -> Table:
    table = Table(title="harness: summary")
    table.add_column("scenario", style="bold")
    table.add_column("verdict")
    for column in ("deliveries", "p50 ms", "p99 ms", "s"):
        table.add_column(column, justify="right")
    table.add_column("also", overflow="fold")
    for scenario in report.scenarios:
        figures = scenario.figures
        table.add_row(
            scenario.name,
            _scenario_verdict(scenario),
            _show(_total(figures, "deliveries")),
            _show(_last(figures, "p50_ms")),
            _show(_last(figures, "p99_ms")),
            f"{scenario.seconds:.1f}",
            glance(figures),
        )
    return table


def _scenario_verdict(scenario: ScenarioResult) -> str:
    failed = sum(1 for c in scenario.checks if c.passed is False)
    skipped = sum(1 for c in scenario.checks if c.passed is None)
    if not scenario.checks:
        return f"{MARKS[False]} (no checks ran)"
    if failed:
        return f"{MARKS[False]} ({failed} of {len(scenario.checks)} checks)"
    return MARKS[True] + (f" ({skipped} skipped)" if skipped else "")


def _total(figures: dict[str, Figure], suffix: str) -> Figure | None:
    """The sum over a scenario's phases (``deliveries``, ``baseline_deliveries``, …)."""
    values = [v for k, v in figures.items() if k.endswith(suffix) and not isinstance(v, str)]
    return sum(values) if values else None


NOT_A_PHASE = ("start_", "end_", "resume_")
"""Qualifiers of a latency figure that are not the phase's own percentile: the median at
a phase's start or end, and a resume's own latency."""


def _last(figures: dict[str, Figure], suffix: str) -> Figure | None:
    """The last phase's value: for two-phase scenarios, the phase under fault."""
    values = [
        value
        for key, value in figures.items()
        if key == suffix
        or (key.endswith(f"_{suffix}") and not key[: -len(suffix)].endswith(NOT_A_PHASE))
    ]
    return values[-1] if values else None


def _show(value: Figure | None) -> str:
    return "-" if value is None else str(value)


HIGHLIGHTS = {
    "eviction_s": "evicted after {} s",
    "flood_accepted": "flood: {} accepted",
    "flood_rate_limited": "{} rate_limited",
    "churn_cycles": "{} churn cycles",
    "reconnects": "{} reconnects",
    "replayed_events": "{} events replayed",
    "churn_rooms_created": "{} churn rooms made",
    "connections_refused": "{} connections refused",
    "kept_up": "kept up: {}",
    "harness_cpu_us_per_delivery": "harness {} µs/delivery",
    "harness_kernel_us_per_delivery": "{} of them in the kernel",
    "harness_lines_per_read": "{} lines/read",
    "harness_cpu_share": "harness CPU share {}",
}
"""Scenario-specific figures worth a glance; the rest are in --verbose and the JSON."""


PER_EVENT = {"harness_cpu_us_per_delivery": "harness {} µs/event received"}
"""A scenario with no counted deliveries (``churn``, ``abuse``) has its CPU divided by the
events its clients received (harness/meter.py): the summary says so."""


def glance(figures: dict[str, Figure]) -> str:
    """A scenario's figures worth a glance, with the harness's own cost, as one line: the
    summary's last column, and the line under each scenario's title on the HTML page."""
    counted = _total(figures, "deliveries") is not None
    texts = HIGHLIGHTS if counted else HIGHLIGHTS | PER_EVENT
    shown = [text.format(figures[key]) for key, text in texts.items() if key in figures]
    return ", ".join(shown)


def _print_failures(console: Console, report: Report) -> None:
    failed = [(s.name, c) for s in report.scenarios for c in s.checks if c.passed is False]
    if not failed:
        return
    console.print(f"[bold red]failed checks ({len(failed)}):[/]")
    for name, check in failed:
        _print_failure(console, name, check)


def _print_failure(console: Console, scenario: str, check: Check) -> None:
    console.print(Text(f"  {scenario}: {check.name}", style="bold"), highlight=False)
    console.print(f"    criterion: {check.criterion}", highlight=False, markup=False)
    console.print(f"    observed:  {check.observed}", highlight=False, markup=False)


def _checks_table(report: Report) -> Table:
    table = Table(title="harness: checks (criteria)", show_lines=False)
    table.add_column("scenario", style="bold")
    table.add_column("check")
    table.add_column("result")
    table.add_column("criterion", overflow="fold")
    table.add_column("observed", overflow="fold")
    for scenario in report.scenarios:
        for index, check in enumerate(scenario.checks):
            table.add_row(
                scenario.name if index == 0 else "",
                check.name,
                MARKS[check.passed],
                check.criterion,
                check.observed,
            )
        if not scenario.checks:
            table.add_row(scenario.name, "(no checks ran)", MARKS[False], "", "")
    return table


def _figures_table(report: Report) -> Table:
    table = Table(title="harness: figures")
    table.add_column("scenario", style="bold")
    table.add_column("figures", overflow="fold")
    for scenario in report.scenarios:
        shown = "  ".join(f"{key} {value}" for key, value in scenario.figures.items())
        table.add_row(scenario.name, shown or "-")
    return table


def write_json(path: str, report: Report) -> None:
    Path(path).write_text(json.dumps(report.as_json(), indent=2) + "\n")
