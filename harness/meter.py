"""How much CPU the harness itself spent on a scenario, and how close it came to saturation.

A load tool's figures describe the server only while the tool has CPU to
spare. Every scenario therefore reports two figures:

* ``harness_cpu_us_per_delivery``: the harness's CPU time (every process:
  the coordinator and the workers) divided by the events its simulated
  clients received (every line the server delivered to them);
* ``harness_cpu_share``: the busiest harness process's CPU time divided by
  the scenario's wall time. Near 1, that process was saturated and the
  latencies measure the harness as much as the server.

With no ``--url`` the server runs inside the coordinator's process, so its
CPU counts as the harness's there (the figures are then an upper bound).
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.fleet import Fleet

SATURATED_SHARE = 0.8
"""A harness process busier than this may have slowed what it measured."""


@dataclass(frozen=True)
class Usage:
    """One worker process's part of a scenario."""

    cpu_s: float
    events: int


@dataclass
class Meter:
    """The CPU and received events of one scenario, in this process and its workers."""

    started_cpu_s: float = field(default_factory=time.process_time)
    started_s: float = field(default_factory=time.perf_counter)
    fleets: list[Fleet] = field(default_factory=list)
    workers: list[Usage] = field(default_factory=list)

    def events(self) -> int:
        own = sum(sim.tally.events for fleet in self.fleets for sim in fleet.sims)
        return own + sum(worker.events for worker in self.workers)

    def figures(self) -> dict[str, float]:
        wall = max(time.perf_counter() - self.started_s, 1e-9)
        own_cpu = time.process_time() - self.started_cpu_s
        cpu = own_cpu + sum(worker.cpu_s for worker in self.workers)
        busiest = max([own_cpu, *(worker.cpu_s for worker in self.workers)])
        events = self.events()
        return {
            "harness_cpu_s": round(cpu, 3),
            "harness_cpu_us_per_delivery": round(cpu * 1e6 / events, 2) if events else 0.0,
            "harness_cpu_share": round(min(busiest / wall, 1.0), 3),
        }


METER: ContextVar[Meter | None] = ContextVar("harness_meter", default=None)
"""The running scenario's meter; fleets register with it (None: nothing is measured)."""


def register(fleet: Fleet) -> None:
    meter = METER.get()
    if meter is not None:
        meter.fleets.append(fleet)


def add_worker(usage: Usage) -> None:
    meter = METER.get()
    if meter is not None:
        meter.workers.append(usage)
