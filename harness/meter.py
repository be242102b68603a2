"""How much CPU the harness itself spent on a scenario, and how close it came to saturation.

A load tool's figures describe the server only while the tool has CPU to
spare. Every scenario therefore reports what the harness spent:

* ``harness_cpu_us_per_delivery``: the CPU time of the harness processes
  that hosted clients during the scenario's counted-traffic phases, divided
  by the messages delivered in them: what receiving and accounting for one
  delivery costs. A scenario without counted traffic (``churn``) divides
  all of its CPU by every event its clients received instead;
* ``harness_kernel_us_per_delivery``: the part of the above spent in the kernel
  (counted-traffic phases only). Each read is a system call, and a TCP read that
  empties its socket sends an ACK: where each read brings one line, this part is
  a floor that no harness code can lower;
* ``harness_cpu_share``: the busiest of those processes' CPU time divided by
  the phase's wall time (the largest over the phases). Near 1, that process
  was saturated and the latencies measure the harness as much as the server;
* ``harness_cpu_s``: the whole scenario's CPU time, connecting and closing
  included, every harness process together.
* ``harness_lines_per_read``: the lines a lean client's read brought, on
  average over the counted-traffic phases (only where lean clients counted
  any). A read costs a system call whatever it brings, so this says why the
  cost per delivery is what it is.

With no ``--url`` the server runs inside the coordinator's process, so its
CPU counts as the harness's wherever that process hosts clients (the figures
are then an upper bound).
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.fleet import Fleet
    from harness.outcome import Outcome

SATURATED_SHARE = 0.8
"""A harness process busier than this may have slowed what it measured."""


@dataclass(frozen=True)
class WorkerUsage:
    """One worker process's part of a scenario."""

    cpu_s: float
    events: int


@dataclass
class Meter:
    """The CPU and received events of one scenario, in this process and its workers."""

    started_cpu_s: float = field(default_factory=time.process_time)
    started_s: float = field(default_factory=time.perf_counter)
    fleets: list[Fleet] = field(default_factory=list)
    workers: list[WorkerUsage] = field(default_factory=list)
    phases: list[Outcome] = field(default_factory=list)

    def events(self) -> int:
        own = sum(sim.tally.events for fleet in self.fleets for sim in fleet.sims)
        return own + sum(worker.events for worker in self.workers)

    def figures(self) -> dict[str, float]:
        wall = max(time.perf_counter() - self.started_s, 1e-9)
        own_cpu = time.process_time() - self.started_cpu_s
        cpu = own_cpu + sum(worker.cpu_s for worker in self.workers)
        busiest = max([own_cpu, *(worker.cpu_s for worker in self.workers)]) / wall
        work, deliveries = cpu, self.events()
        if self.phases:
            work = sum(phase.cpu_s for phase in self.phases)
            deliveries = sum(phase.delivered for phase in self.phases)
            busiest = max(phase.busiest_share for phase in self.phases)
        figures = {
            "harness_cpu_s": round(cpu, 3),
            "harness_cpu_us_per_delivery": round(work * 1e6 / deliveries, 2) if deliveries else 0.0,
        }
        if self.phases and deliveries:
            kernel = sum(phase.kernel_s for phase in self.phases)
            figures["harness_kernel_us_per_delivery"] = round(kernel * 1e6 / deliveries, 2)
        figures["harness_cpu_share"] = round(min(busiest, 1.0), 3)
        reads = sum(phase.reads for phase in self.phases)
        if reads:
            lines = sum(phase.lines_read for phase in self.phases)
            figures["harness_lines_per_read"] = round(lines / reads, 2)
        return figures


METER: ContextVar[Meter | None] = ContextVar("harness_meter", default=None)
"""The running scenario's meter; fleets register with it (None: nothing is measured)."""


def register(fleet: Fleet) -> None:
    meter = METER.get()
    if meter is not None:
        meter.fleets.append(fleet)


def add_phase(outcome: Outcome) -> None:
    meter = METER.get()
    if meter is not None:
        meter.phases.append(outcome)


def add_worker(usage: WorkerUsage) -> None:
    meter = METER.get()
    if meter is not None:
        meter.workers.append(usage)
