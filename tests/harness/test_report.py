"""The report at a glance: a summary row per scenario; failed checks, with evidence, last."""

from __future__ import annotations

import io

from rich.console import Console

from harness.model import Report, ScenarioResult
from harness.report import render


def _report() -> Report:
    good = ScenarioResult("broadcast", "fan-out")
    good.check("exactly once", "GOOD CRITERION", True, "lost 0")
    good.figures.update(p50_ms=1.5, p99_ms=4.25, deliveries=320)
    good.figures.update(start_p50_ms=1.25, end_p50_ms=1.75, resume_p50_ms=9.5)
    bad = ScenarioResult("flood", "flood control")
    bad.check("all connected", "every client connects", True, "4/4 connected")
    bad.check("flooder held back", "BAD CRITERION", False, "sent 340, 340 accepted")
    bad.figures.update(baseline_deliveries=100, flooded_deliveries=90, flooded_p99_ms=9.0)
    bad.figures.update(flooded_p50_ms=3.5, flooded_end_p50_ms=8.5)
    bad.notes.append("a scenario note")
    return Report("a server", 4, {"seed": 42}, scenarios=[good, bad], notes=["a run note"])


def _rendered(report: Report, *, verbose: bool = False) -> list[str]:
    out = io.StringIO()
    render(Console(file=out, width=160), report, verbose=verbose)
    return out.getvalue().splitlines()


def test_summary_shows_each_scenario_and_only_failed_checks_with_evidence() -> None:
    lines = _rendered(_report())
    text = "\n".join(lines)
    row = next(line for line in lines if "broadcast" in line)
    assert "pass" in row
    assert "320" in row
    assert "4.25" in row
    assert " 1.5 " in row  # the phase's median: not its start's, end's or a resume's
    flood = next(line for line in lines if "flood " in line and "FAIL" in line)
    assert "190" in flood  # deliveries of both phases
    assert " 3.5 " in flood  # the phase under fault's median
    assert "GOOD CRITERION" not in text  # criteria of passing checks: --verbose only
    assert lines[-5:] == [
        "failed checks (1):",
        "  flood: flooder held back",
        "    criterion: BAD CRITERION",
        "    observed:  sent 340, 340 accepted",
        "FAILED — 4 clients against a server, seed 42 (replay with --seed 42)",
    ]
    assert text.index("note: a run note") < text.index("failed checks")


def test_the_harness_cost_is_per_delivery_where_deliveries_were_counted_else_per_event() -> None:
    report = _report()
    churn = ScenarioResult("churn", "comings and goings")
    churn.check("balanced", "one joined and one left each", True, "0 wrong")
    report.scenarios.append(churn)
    for scenario in report.scenarios:
        scenario.figures["harness_cpu_us_per_delivery"] = 12.5
    report.scenarios[0].figures["harness_kernel_us_per_delivery"] = 7.5
    rows = {
        name: next(r for r in _rendered(report) if f" {name} " in r)
        for name in ("broadcast", "flood", "churn")
    }
    assert "harness 12.5 µs/delivery, 7.5 of them in the kernel" in rows["broadcast"]
    assert "harness 12.5 µs/delivery" in rows["flood"]  # its phases' deliveries count
    assert "harness 12.5 µs/event received" in rows["churn"]


def test_one_client_is_not_called_clients() -> None:
    report = Report("a server", 1, {"seed": 7})
    assert (
        _rendered(report)[-1]
        == "all checks passed — 1 client against a server, seed 7 (replay with --seed 7)"
    )


def test_verbose_adds_every_criterion_and_figure() -> None:
    text = "\n".join(_rendered(_report(), verbose=True))
    assert "GOOD CRITERION" in text
    assert "flooded_p99_ms 9.0" in text


def test_a_passing_report_lists_no_failures() -> None:
    report = _report()
    report.scenarios.pop()
    lines = _rendered(report)
    assert "failed checks" not in "\n".join(lines)
    assert lines[-1].startswith("all checks passed — 4 clients")
