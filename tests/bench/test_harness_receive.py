"""bench.harness_receive still measures what it says: every line written is counted once."""

from __future__ import annotations

import pytest

from bench.harness_receive import measure


@pytest.mark.parametrize("ws", [False, True])
def test_every_line_written_is_counted_and_a_read_brings_what_a_round_wrote(ws: bool) -> None:
    cost = measure(20, 4, 5, ws=ws)  # measure() itself fails unless all 400 lines were counted
    assert cost.lines_per_read >= 4
