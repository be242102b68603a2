"""What a person sees: a progress line while the harness runs, a table of checks at the end."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from harness.model import Report, ScenarioResult

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


def render(console: Console, report: Report) -> None:
    console.print(_checks_table(report))
    console.print(_figures_table(report))
    for note in report.notes:
        console.print(f"note: {note}")
    for scenario in report.scenarios:
        for note in scenario.notes:
            console.print(f"note ({scenario.name}): {note}")
    verdict = "[bold green]all checks passed[/]" if report.passed else "[bold red]FAILED[/]"
    console.print(f"{verdict} — {report.clients} clients against {report.target}")


def _checks_table(report: Report) -> Table:
    table = Table(title="harness: checks", show_lines=False)
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
