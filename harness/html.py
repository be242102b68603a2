"""``--html FILE``: one self-contained page per run, to look at.

Per scenario: the verdict and every check (criterion and what was observed),
the latency percentiles, and for each counted-traffic phase two plots drawn
by matplotlib as inline SVG: latency over time (median and p99 of each
100 ms of receipt time) and deliveries per second over time. Then the
settings and the seed. Nothing is loaded from anywhere: the page opens
offline, and its plots are part of it.
"""

from __future__ import annotations

import io
from html import escape
from importlib.util import find_spec
from pathlib import Path

from harness.model import Check, Report, ScenarioResult, counted
from harness.report import glance
from harness.tally import SLOT_NS, Latency, Slot

STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; }
.verdict { font-weight: bold; padding: 0.1em 0.5em; border-radius: 4px; color: white; }
.verdict.pass { background: #2e7d32; } .verdict.fail { background: #c62828; }
.verdict.skip { background: #9e9d24; }
tr.pass td { background: #e8f5e9; } tr.fail td { background: #ffebee; }
tr.skip td { background: #f9fbe7; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
section.scenario { border-top: 2px solid #888; margin-top: 2em; }
figure { margin: 0.5em 0; }
.note { color: #6d4c41; }
"""
PERCENTILES = ("p50_ms", "p95_ms", "p99_ms", "max_ms")


def html_problem() -> str | None:
    """Why ``--html`` cannot work here (None: it can)."""
    if find_spec("matplotlib") is None:
        return "--html needs matplotlib: pip install 'triochat[report]'"
    return None


def write_html(path: str, report: Report) -> None:
    Path(path).write_text(render_html(report), encoding="utf-8")


def render_html(report: Report) -> str:
    verdict = _run_verdict(report)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>harness: {escape(verdict)} — {escape(report.target)}</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>harness report</h1>",
        f'<p id="verdict" class="verdict {_css(report.passed)}">{escape(verdict)}</p>',
        f"<p>{report.crowd} against {escape(report.target)}, seed"
        f' <span id="seed">{report.seed}</span>, {counted(report.workers, "worker")}, run id'
        f" {escape(report.run_id)}</p>",
    ]
    parts += [f'<p class="note">note: {escape(note)}</p>' for note in report.notes]
    parts += [_scenario(scenario) for scenario in report.scenarios]
    parts.append("<h2>settings</h2>")
    parts.append(_table(["setting", "value"], [[k, str(v)] for k, v in report.settings.items()]))
    parts.append("</body></html>")
    return "\n".join(parts)


def _run_verdict(report: Report) -> str:
    if report.interrupted is not None:
        return f"INTERRUPTED ({report.interrupted.signal})"
    return "all checks passed" if report.passed else "FAILED"


def _css(passed: bool | None) -> str:
    return "skip" if passed is None else ("pass" if passed else "fail")


def _scenario(scenario: ScenarioResult) -> str:
    failed = sum(1 for check in scenario.checks if check.passed is False)
    verdict = "pass" if scenario.passed else f"FAIL ({failed} of {len(scenario.checks)} checks)"
    parts = [
        f'<section class="scenario" id="scenario-{escape(scenario.name)}"'
        f' data-verdict="{_css(scenario.passed)}">',
        f"<h2>{escape(scenario.name)} <span class='verdict {_css(scenario.passed)}'>"
        f"{escape(verdict)}</span></h2>",
        f"<p>Proves: {escape(scenario.proves)} ({scenario.seconds:.1f} s)</p>",
        f'<p class="glance">{escape(glance(scenario.figures))}</p>',
        _table(["check", "result", "criterion", "observed"], [_row(c) for c in scenario.checks]),
    ]
    parts += [f'<p class="note">note: {escape(note)}</p>' for note in scenario.notes]
    parts.append(_percentiles(scenario))
    for label, timeline in scenario.timelines.items():
        if timeline:
            parts.append(f"<h3>{escape(label)}</h3>")
            parts.append(_plots(scenario.name, label, timeline))
    figures = [[key, str(value)] for key, value in scenario.figures.items()]
    parts.append("<details><summary>every figure</summary>")
    parts.append(_table(["figure", "value"], figures))
    parts.append("</details></section>")
    return "\n".join(parts)


def _row(check: Check) -> list[str]:
    status = "skip" if check.passed is None else ("pass" if check.passed else "FAIL")
    return [check.name, status, check.criterion, check.observed]


def _percentiles(scenario: ScenarioResult) -> str:
    rows = []
    for key, value in scenario.figures.items():
        if any(key.endswith(suffix) for suffix in PERCENTILES):
            rows.append([key, str(value)])
    if not rows:
        return ""
    return "<h3>latency (ms)</h3>" + _table(["percentile", "ms"], rows)


def _table(head: list[str], rows: list[list[str]]) -> str:
    header = "".join(f"<th>{escape(cell)}</th>" for cell in head)
    body = []
    for row in rows:
        cls = f' class="{row[1].lower()}"' if head[:2] == ["check", "result"] else ""
        cells = "".join(f"<td>{escape(cell)}</td>" for cell in row)
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><tr>{header}</tr>{''.join(body)}</table>"


def _plots(scenario: str, label: str, timeline: dict[int, Slot]) -> str:
    # Imported here: matplotlib takes a while to load, and only --html needs it.
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    seconds = [number * SLOT_NS / 1e9 for number in timeline]
    p50, p99 = [], []
    for slot in timeline.values():
        latency = Latency(slot.latency_us)
        p50.append(latency.ms(50) if slot.latency_us else float("nan"))
        p99.append(latency.ms(99) if slot.latency_us else float("nan"))
    rate = [slot.deliveries * 1e9 / SLOT_NS for slot in timeline.values()]
    figure, (top, bottom) = pyplot.subplots(2, 1, figsize=(10, 6), sharex=True)
    top.plot(seconds, p50, label="median", color="#1565c0")
    top.plot(seconds, p99, label="p99", color="#c62828")
    top.set_ylabel("latency (ms)")
    top.set_title(f"{scenario}: {label}")
    top.legend()
    top.grid(alpha=0.3)
    bottom.plot(seconds, rate, color="#2e7d32")
    bottom.set_ylabel("deliveries/s")
    bottom.set_xlabel("seconds since the first scheduled send (by receipt time)")
    bottom.grid(alpha=0.3)
    figure.tight_layout()
    svg = io.StringIO()
    figure.savefig(svg, format="svg")
    pyplot.close(figure)
    body = svg.getvalue()
    body = body[body.index("<svg") :]  # drop the XML prolog: the SVG sits inside HTML
    return f'<figure class="plot" data-scenario="{escape(scenario)}">{body}</figure>'
