"""The WebSocket transport against the Autobahn TestSuite's cases (issue 14, acceptance 2).

kosoku (pinned in pyproject.toml) runs Autobahn's fuzzing client, every case of
the suite, against the echo server of :mod:`tests.conformance.echo` (the
server's own reading, writing and closing). No case may fail, in its messages
or in its close; the compression cases (12.*, 13.*) are unimplemented, since no
extension is ever negotiated. The counts are in docs/conformance.md; ``pytest -s``
prints them.

A sync test running ``trio.run`` itself (this directory is not in trio mode, see
tests/conftest.py). kosoku runs as its command-line tool in a child process, so
a run that hangs is killed at :data:`TIMEOUT`; it writes Autobahn's reports
(``index.json``, a JSON and an HTML page per case) into the test's ``tmp_path``.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import trio

from tests.conformance.echo import serve_echo

TIMEOUT = 120.0
"""The whole run; it takes about 5 s (six cases wait 1 s on purpose)."""
PARALLEL = 4
"""Cases run at once: the waiting cases overlap (10 s one at a time)."""
CASES = 517
"""Every case kosoku 0.1.0 has: none may go missing from the run."""
PASSING = ("OK", "NON-STRICT", "INFORMATIONAL")
UNIMPLEMENTED = "UNIMPLEMENTED"
MAY_BE_UNIMPLEMENTED = ("12.", "13.")
"""permessage-deflate: never negotiated here (triochat/transport/upgrade.py)."""
OUTCOMES = (*PASSING, UNIMPLEMENTED, "FAILED", "UNCLEAN")
"""The outcomes docs/conformance.md counts, printed even when none has that outcome."""


def test_autobahn_cases_pass_against_the_websocket_transport(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    started = time.monotonic()
    cases = trio.run(_run_suite, reports)
    wall = time.monotonic() - started

    outcomes = {case: outcome(result) for case, result in cases.items()}
    counts = Counter(outcomes.values())
    shown = ", ".join(f"{name} {counts[name]}" for name in OUTCOMES)
    others = ", ".join(f"{name} {n}" for name, n in counts.items() if name not in OUTCOMES)
    print(f"\nAutobahn (kosoku): {len(cases)} cases in {wall:.1f} s: {shown}")
    if others:
        print(f"  and: {others}")

    assert len(cases) == CASES, f"{CASES - len(cases)} cases did not run"
    wrong = [
        case
        for case, result in outcomes.items()
        if result not in PASSING
        and not (result == UNIMPLEMENTED and case.startswith(MAY_BE_UNIMPLEMENTED))
    ]
    assert not wrong, "\n".join(_explain(reports, case, cases[case]) for case in wrong)


def outcome(result: dict[str, Any]) -> str:
    """One word per case, as Autobahn's summary shows it: how its messages went
    (OK, NON-STRICT, INFORMATIONAL, UNIMPLEMENTED, FAILED), unless they passed and
    its close did not (UNCLEAN, WRONG CODE, FAILED BY CLIENT, FAILED)."""
    behavior: str = result["behavior"]
    close: str = result["behaviorClose"]
    if behavior in PASSING and close not in ("OK", "INFORMATIONAL"):
        return close
    return behavior


async def _run_suite(reports: Path) -> dict[str, dict[str, Any]]:
    """Serve the echo, run every case against it; each case's entry in ``index.json``."""
    kosoku = shutil.which("kosoku", path=str(Path(sys.executable).parent))
    assert kosoku is not None, "kosoku is missing: pip install -e '.[dev]'"
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_echo)
        command = [kosoku, f"ws://127.0.0.1:{port}", "-p", str(PARALLEL), "-o", str(reports)]
        with trio.fail_after(TIMEOUT):
            done = await trio.run_process(
                command, capture_stdout=True, capture_stderr=True, check=False
            )
        nursery.cancel_scope.cancel()
    # 1: some case did not pass (an unimplemented one too); the reports are written anyway.
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode in (0, 1), f"kosoku exited with {done.returncode}:\n{output}"
    index: dict[str, dict[str, dict[str, Any]]] = json.loads((reports / "index.json").read_text())
    (agent,) = index.values()  # one server under test
    return agent


def _explain(reports: Path, case: str, result: dict[str, Any]) -> str:
    """A case that went wrong, in the words of its report."""
    detail = json.loads((reports / result["reportfile"]).read_text())
    return (
        f"{case}: {result['behavior']}/{result['behaviorClose']} "
        f"(close code {result['remoteCloseCode']}): {detail['description']} "
        f"-- {detail['result']} -- {detail['resultClose']}"
    )
