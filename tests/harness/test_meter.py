"""The harness's own cost, as every scenario reports it: what the workers' parts add up to."""

from __future__ import annotations

from harness.meter import Meter
from harness.outcome import Outcome, merge


def _part(cpu_s: float, kernel_s: float, delivered: int) -> Outcome:
    return Outcome(
        planned=[1], sent=[1], receivers=1, started_ns=0,
        delivered=delivered, cpu_s=cpu_s, kernel_s=kernel_s, busiest_share=0.5,
    )  # fmt: skip


def test_the_kernels_part_is_added_up_over_workers_and_divided_like_the_whole() -> None:
    figures = Meter(phases=[merge([_part(2.0, 1.5, 1000), _part(1.0, 0.5, 1000)])]).figures()
    assert figures["harness_cpu_us_per_delivery"] == 1500.0
    assert figures["harness_kernel_us_per_delivery"] == 1000.0


def test_a_scenario_without_counted_traffic_has_no_kernel_part() -> None:
    """``churn`` divides its CPU by the events received: the kernel's part of that is
    not a part of a delivery, so it is not shown."""
    assert "harness_kernel_us_per_delivery" not in Meter().figures()
