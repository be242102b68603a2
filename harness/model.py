"""The report's shape: checks with their criteria, figures, and the verdict they add up to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.tally import Slot

Figure = int | float | str

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_SIGNAL_BASE = 128
"""An interrupted run exits 128 + the signal's number, as shells do: 130 for SIGINT."""


def counted(count: int, noun: str) -> str:
    """``1 worker``, ``2 workers``: a count with its noun, plural where English wants it."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


@dataclass
class Check:
    name: str
    criterion: str
    """The pass criterion, as printed in the report."""
    passed: bool | None
    """None: skipped (the target cannot show it, e.g. flood control turned off)."""
    observed: str

    def as_json(self) -> dict[str, Any]:
        status = "skip" if self.passed is None else ("pass" if self.passed else "fail")
        return {
            "name": self.name,
            "criterion": self.criterion,
            "status": status,
            "observed": self.observed,
        }


@dataclass
class ScenarioResult:
    name: str
    proves: str
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Figure] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    timelines: dict[str, dict[int, Slot]] = field(default_factory=dict)
    """Per traffic phase (its label, or ``traffic``): deliveries and latency per slot."""

    def check(self, name: str, criterion: str, passed: bool | None, observed: object) -> bool:
        self.checks.append(Check(name, criterion, passed, str(observed)))
        return passed is not False

    @property
    def passed(self) -> bool:
        return all(c.passed is not False for c in self.checks) and bool(self.checks)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "proves": self.proves,
            "passed": self.passed,
            "seconds": round(self.seconds, 3),
            "checks": [c.as_json() for c in self.checks],
            "figures": self.figures,
            "notes": self.notes,
        }


@dataclass(frozen=True)
class Interruption:
    """A signal stopped the run; the scenario it cut short is not in the report."""

    signal: str
    signum: int
    during: str | None
    """The scenario that was running (None: before the first one started)."""

    def as_json(self) -> dict[str, Any]:
        return {"signal": self.signal, "during": self.during}


@dataclass
class Report:
    target: str
    clients: int
    settings: dict[str, Figure]
    run_id: str = ""
    """The prefix of every room and nick this run used (``h<hex>``)."""
    seed: int = 0
    """The seed the scenarios' random choices came from (given, or drawn for the run)."""
    workers: int = 1
    scenarios: list[ScenarioResult] = field(default_factory=list)
    """Finished scenarios only, in the order they ran."""
    notes: list[str] = field(default_factory=list)
    interrupted: Interruption | None = None

    @property
    def passed(self) -> bool:
        """Every check passed and the run was not cut short."""
        return self.interrupted is None and all(s.passed for s in self.scenarios)

    @property
    def crowd(self) -> str:
        """``1 client``, ``50 clients``: how the report names its client count."""
        return counted(self.clients, "client")

    @property
    def exit_code(self) -> int:
        if self.interrupted is not None:
            return EXIT_SIGNAL_BASE + self.interrupted.signum
        return EXIT_PASSED if self.passed else EXIT_FAILED

    def as_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "passed": self.passed,
            "exit_code": self.exit_code,
            "interrupted": self.interrupted.as_json() if self.interrupted else None,
            "target": self.target,
            "run_id": self.run_id,
            "seed": self.seed,
            "workers": self.workers,
            "clients": self.clients,
            "settings": self.settings,
            "notes": self.notes,
            "scenarios": [s.as_json() for s in self.scenarios],
        }
