"""``harness compare A.json B.json``: what changed, figure by figure, between two runs.

Both files are ``--json`` reports. For every scenario in either, each figure
in either is printed with its value in A, in B, and the change (B - A, and
as a percentage of A when A is not 0); figures only one run has show ``-``
for the other. The exit status is 0, or 2 when a file cannot be read as a
harness report (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from harness.model import EXIT_PASSED, EXIT_USAGE

WIDE = 160


class NotAReport(Exception):
    """The file is missing, not JSON, or not a harness report; the message says which."""


def load(path: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise NotAReport(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise NotAReport(f"{path}: cannot read it ({exc})") from None
    except json.JSONDecodeError as exc:
        raise NotAReport(f"{path}: not JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("scenarios"), list):
        raise NotAReport(f"{path}: not a harness --json report (no scenarios list)")
    return data


def change(a: object, b: object) -> str:
    """``b`` against ``a``: signed difference and percentage for numbers, else same/new."""
    if a is None or b is None:
        return "-"
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool):
        diff = b - a
        shown = f"{diff:+,}" if isinstance(diff, int) else f"{diff:+,.2f}"
        if diff == 0:
            return "same"
        return shown if a == 0 else f"{shown} ({diff / abs(a):+.1%})"
    return "same" if a == b else f"{a} → {b}"


def rows(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(scenario, figure, A, B, change) for every figure of every scenario in either."""
    first = {s["name"]: s for s in a["scenarios"]}
    second = {s["name"]: s for s in b["scenarios"]}
    found = []
    for name in dict.fromkeys([*first, *second]):
        verdict_a = _verdict(first.get(name))
        verdict_b = _verdict(second.get(name))
        found.append((name, "verdict", verdict_a, verdict_b, change(verdict_a, verdict_b)))
        figures_a = (first.get(name) or {}).get("figures", {})
        figures_b = (second.get(name) or {}).get("figures", {})
        for key in dict.fromkeys([*figures_a, *figures_b]):
            value_a, value_b = figures_a.get(key), figures_b.get(key)
            found.append((name, key, _show(value_a), _show(value_b), change(value_a, value_b)))
    return found


def _verdict(scenario: dict[str, Any] | None) -> str:
    if scenario is None:
        return "-"
    return "pass" if scenario.get("passed") else "FAIL"


def _show(value: object) -> str:
    return "-" if value is None else str(value)


def compare_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="harness compare",
        description="Print the per-figure change between two harness --json reports.",
    )
    parser.add_argument("first", metavar="A.json")
    parser.add_argument("second", metavar="B.json")
    args = parser.parse_args(argv)
    try:
        a, b = load(args.first), load(args.second)
    except NotAReport as exc:
        print(f"harness compare: {exc}", file=sys.stderr)
        return EXIT_USAGE
    console = Console()
    if not console.is_terminal:
        console = Console(width=WIDE)
    table = Table(title=f"harness compare: A = {args.first}, B = {args.second}")
    for column in ("scenario", "figure", "A", "B", "change (B - A)"):
        table.add_column(column, justify="left" if column in ("scenario", "figure") else "right")
    shown = ""
    for scenario, *cells in rows(a, b):
        table.add_row(scenario if scenario != shown else "", *cells)
        shown = scenario
    console.print(table)
    console.print(
        f"A: seed {a.get('seed', '-')}, {a.get('clients', '-')} clients, {a.get('target', '-')};"
        f" B: seed {b.get('seed', '-')}, {b.get('clients', '-')} clients, {b.get('target', '-')}",
        soft_wrap=True,
        markup=False,
    )
    return EXIT_PASSED
