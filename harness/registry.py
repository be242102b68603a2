"""The scenarios, by name. Each is ``async run(ctx, result)`` filling in its checks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from harness.context import Context
from harness.model import ScenarioResult
from harness.scenarios import (
    abuse,
    bad_input,
    broadcast,
    churn,
    departures,
    flood,
    resume,
    security,
    slow_reader,
)

Run = Callable[[Context, ScenarioResult], Awaitable[None]]

SCENARIOS: dict[str, tuple[str, Run]] = {
    "broadcast": (broadcast.PROVES, broadcast.run),
    "disconnect": (departures.DISCONNECT_PROVES, departures.run_disconnect),
    "broken_pipe": (departures.BROKEN_PIPE_PROVES, departures.run_broken_pipe),
    "slow_reader": (slow_reader.PROVES, slow_reader.run),
    "flood": (flood.PROVES, flood.run),
    "bad_input": (bad_input.PROVES, bad_input.run),
    "churn": (churn.PROVES, churn.run),
    "resume": (resume.PROVES, resume.run),
    "abuse": (abuse.PROVES, abuse.run),
    "security": (security.PROVES, security.run),
}

SHARDED = frozenset(SCENARIOS) - {"abuse"}
"""The scenarios whose members ``--workers`` spreads over processes: all but ``abuse``,
whose size does not depend on ``--clients`` (see docs/harness.md, "Many clients")."""
