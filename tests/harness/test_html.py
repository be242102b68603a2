"""``--html`` opened in a real headless Chromium, and ``harness compare`` on two reports.

The page is checked the way a person would see it: Chromium (Debian's package,
``make system-deps``) loads it from disk with networking off, its DOM text
must carry the verdicts, checks and seed, and its screenshot must show the
plots' lines. Where Chromium is missing the browser tests are skipped.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import trio
from matplotlib import image

from harness.html import render_html
from harness.model import Report, ScenarioResult
from harness.tally import Slot

HARNESS = [sys.executable, "-m", "harness"]
CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MEDIAN_BLUE = (0x15, 0x65, 0xC0)
"""The median latency line's colour in harness/html.py."""


async def _run(*args: str) -> tuple[int, str, str]:
    with trio.fail_after(90):
        done = await trio.run_process(
            [*args], capture_stdout=True, capture_stderr=True, check=False
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


@pytest.fixture
async def run_pages(tmp_path: Path) -> tuple[Path, Path]:
    """One real run (its own server, two workers): its HTML page and JSON report."""
    page, report = tmp_path / "run.html", tmp_path / "run.json"
    code, out, err = await _run(
        *HARNESS,
        *("--scenario", "broadcast", "--clients", "4", "--messages", "20", "--rate", "40"),
        *("--transport", "tcp", "--workers", "2", "--seed", "77", "--quiet"),
        *("--html", str(page), "--json", str(report)),
    )
    assert code == 0, out + err
    return page, report


async def test_the_page_is_self_contained(run_pages: tuple[Path, Path]) -> None:
    html = run_pages[0].read_text()
    assert html.count("<svg") == 1  # broadcast's one traffic phase
    assert not re.search(r"<(script|link|img|iframe)\b", html)
    assert not re.search(r"""(src|href)=["']?https?:""", html)


@needs_chromium
async def test_chromium_shows_verdicts_checks_seed_and_plots(
    run_pages: tuple[Path, Path], tmp_path: Path
) -> None:
    page = run_pages[0]
    assert CHROMIUM is not None
    browser = [CHROMIUM, *BROWSER_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    code, dom, err = await _run(*browser, "--dump-dom", page.as_uri())
    assert code == 0, err
    text = re.sub(r"<[^>]+>", " ", dom)
    assert "all checks passed" in text
    assert re.search(r"broadcast\s+pass", text)
    assert "harness CPU share" in text
    assert "4 clients against" in text
    assert "2 workers," in text
    for check in ("all connected", "exactly once", "in order", "all sends accepted"):
        assert check in text
    assert re.search(r'id="seed">77<', dom)
    shot = tmp_path / "shot.png"
    code, _, err = await _run(
        *browser, f"--screenshot={shot}", "--window-size=1200,2000", page.as_uri()
    )
    assert code == 0, err
    pixels = (image.imread(str(shot))[:, :, :3] * 255).round()
    assert pixels.std() > 10  # not blank
    blue = (abs(pixels - MEDIAN_BLUE).sum(axis=2) < 30).sum()
    assert blue > 100, f"{blue} pixels of the median line"


async def test_compare_prints_each_figures_change(
    run_pages: tuple[Path, Path], tmp_path: Path
) -> None:
    first = run_pages[1]
    changed = json.loads(first.read_text())
    figures = changed["scenarios"][0]["figures"]
    figures["p99_ms"] = figures["p99_ms"] * 2 or 1.0
    second = tmp_path / "second.json"
    second.write_text(json.dumps(changed))
    code, out, err = await _run(*HARNESS, "compare", str(first), str(second))
    assert code == 0, err
    row = next(line for line in out.splitlines() if "p99_ms" in line)
    assert "+100.0%" in row or "+1" in row, row
    assert re.search(r"deliveries\s.*\bsame\b", out), out
    code, out, err = await _run(*HARNESS, "compare", str(first), str(tmp_path / "nope.json"))
    assert code == 2
    assert err == f"harness compare: {tmp_path / 'nope.json'}: no such file\n"
    (tmp_path / "bad.json").write_text("{not json")
    code, _, err = await _run(*HARNESS, "compare", str(first), str(tmp_path / "bad.json"))
    assert code == 2
    assert err.startswith("harness compare: ")
    assert err.count("\n") == 1


def test_a_failed_run_reads_failed() -> None:
    bad = ScenarioResult("broadcast", "fan-out")
    bad.check("exactly once", "lost = 0", False, "lost 1")
    bad.timelines["traffic"] = {0: Slot(3, {1000: 3}), 1: Slot(2, {2000: 2})}
    html = render_html(Report("a server", 4, {"seed": 5}, seed=5, scenarios=[bad]))
    assert 'class="verdict fail">FAILED<' in html
    assert '<tr class="fail"><td>exactly once</td><td>FAIL</td>' in html
    assert html.count("<svg") == 1


def test_each_scenario_says_at_a_glance_what_the_harness_itself_spent() -> None:
    """Whether a page's figures are the server's depends on how busy the harness was."""
    scenario = ScenarioResult("broadcast", "fan-out")
    scenario.check("exactly once", "lost = 0", True, "lost 0")
    scenario.figures.update(deliveries=100, kept_up="yes", harness_cpu_share=0.91)
    scenario.figures.update(harness_cpu_us_per_delivery=2.5)
    html = render_html(Report("a server", 4, {"seed": 5}, seed=5, scenarios=[scenario]))
    glance = "kept up: yes, harness 2.5 µs/delivery, harness CPU share 0.91"
    assert f'<p class="glance">{glance}</p>' in html
