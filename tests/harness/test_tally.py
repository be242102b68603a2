"""The receive path's accounting: exact counts, and latency buckets that are the histogram's own."""

from __future__ import annotations

import random

import msgspec
from hdrh.histogram import HdrHistogram

from harness.outcome import Outcome, merge
from harness.tally import HIGHEST_US, Book, Latency, Slot, Tally, hdr_value, take_round
from harness.wire import counted_text, now_ns


def test_bucket_rounded_counts_are_the_histogram_of_the_raw_values() -> None:
    rng = random.Random(5)
    raw = HdrHistogram(1, HIGHEST_US, 3)
    counted = Latency()
    for _ in range(20_000):
        us = int(rng.lognormvariate(8, 2)) + 1
        raw.record_value(min(us, HIGHEST_US))
        counted.record_ns(us * 1000)
    for percentile in (0, 50, 90, 99, 99.9, 100):
        assert counted.histogram().get_value_at_percentile(
            percentile
        ) == raw.get_value_at_percentile(percentile)
    assert counted.count == raw.get_total_count()


def test_a_rounded_value_stays_in_its_bucket() -> None:
    hist = HdrHistogram(1, HIGHEST_US, 3)
    for us in (1, 2047, 2048, 2049, 4095, 123_456, 99_999_999):
        assert hist.get_lowest_equivalent_value(us) == hdr_value(us)


def _message(room: str, seq: int, sender: int, n: int, scheduled: int | None = None) -> bytes:
    text = counted_text(sender, n, now_ns() if scheduled is None else scheduled)
    return _said(room, seq, text)


def _said(room: str, seq: int, text: str) -> bytes:
    return msgspec.json.encode(
        {"type": "message", "room": room, "seq": seq, "from": "x", "text": text, "ts": 0.0}
    )


def test_a_round_counts_every_receiver_and_stamps_latency_per_round() -> None:
    """The same texts reach several receivers in one round, and again in a later one:
    each receipt counts, strangers and plain texts do not, and latency is the round's."""
    book = Book([2, 1])
    tallies = [Tally(roster=False) for _ in range(3)]
    for tally in tallies:
        tally.follow(book)
    sent = 1_000_000_000
    lines = [
        _message("r", 1, 0, 0, sent),
        _message("r", 2, 1, 0, sent),
        _message("r", 3, 5, 0, sent),  # no such sender
        _said("r", 4, "hello"),  # not a counted text
    ]
    chunk = b"\n".join(lines) + b"\n"
    assert take_round(tallies, [chunk] * 3, sent + 5_000_000) == 12
    later = [_message("r", 5, 0, 1, sent), _message("r", 6, 0, 0, sent)]  # 0:0 again
    take_round(tallies[:1], [b"\n".join(later) + b"\n"], sent + 9_000_000)
    assert book.delivered == 8
    assert [t.strangers for t in tallies] == [1, 1, 1]
    assert [t.seq_defects + t.out_of_order for t in tallies] == [1, 0, 0]
    assert tallies[0].lost_and_duplicated([2, 1], range(2)) == (0, 1)
    assert book.latency.counts == {hdr_value(5_000): 6, hdr_value(9_000): 2}


def test_each_receivers_lines_are_counted_as_its_own() -> None:
    """Rounds where each read brought one line, and one where a read brought two and
    another a blank line only: every line is counted for the receiver that read it."""
    book = Book([2, 2])
    tallies = [Tally(roster=False) for _ in range(2)]
    for tally in tallies:
        tally.follow(book)
    take_round(tallies, [_message("a", 1, 0, 0) + b"\n", _message("b", 1, 1, 0) + b"\n"], 0)
    both = _message("a", 2, 0, 1) + b"\n" + _message("a", 3, 1, 0) + b"\n"
    take_round(tallies, [both, b"\n"], 0)
    assert tallies[0].lost_and_duplicated([2, 2], range(2)) == (1, 0)
    assert tallies[1].lost_and_duplicated([2, 2], range(2)) == (3, 0)
    assert [t.seq_defects for t in tallies] == [0, 0]


def test_a_batch_counts_lost_duplicated_reordered_and_garbled_exactly() -> None:
    book = Book([3, 3])
    tally = Tally()
    tally.follow(book)
    lines = [
        _message("r", 1, 0, 0),
        _message("r", 2, 0, 2),
        _message("r", 3, 0, 1),  # out of order
        _message("r", 4, 1, 0),
        _message("r", 4, 1, 0),  # duplicated (and a seq repeat)
        b"{not json",
    ]
    tally.take(lines)
    assert tally.garbled == 1
    assert tally.out_of_order == 1
    assert tally.seq_defects == 1
    assert tally.lost_and_duplicated([3, 3], range(2)) == (2, 1)  # 1:1 and 1:2 never came
    assert book.delivered == 5
    assert book.latency.count == 5


def test_every_room_event_takes_a_seq_a_topic_included() -> None:
    tally = Tally()
    events = [
        {"type": "joined", "room": "r", "seq": 1, "nick": "ada", "ts": 0.0},
        {"type": "topic", "room": "r", "seq": 2, "from": "ada", "text": "t", "ts": 0.0},
        {"type": "left", "room": "r", "seq": 3, "nick": "ada", "reason": "part", "ts": 0.0},
    ]
    tally.take([msgspec.json.encode(event) for event in events])
    tally.take([_message("r", 4, 0, 0)])
    assert tally.seq_defects == 0


def test_merged_outcomes_add_up() -> None:
    a = Outcome(planned=[2, 2], sent=[2, 0], receivers=3, started_ns=0, lost=1, delivered=5)
    a.timeline[0] = Slot(5, {100: 5})
    b = Outcome(planned=[2, 2], sent=[0, 2], receivers=2, started_ns=0, duplicated=2)
    b.timeline[0] = Slot(4, {100: 3, 200: 1})
    b.timeline[3] = Slot(1, {5000: 1})
    b.errors["rate_limited"] = 1
    total = merge([a, b])
    assert total.sent == [2, 2]
    assert (total.receivers, total.lost, total.duplicated) == (5, 1, 2)
    assert total.timeline[0] == Slot(9, {100: 8, 200: 1})
    assert total.latency.count == 10
    assert total.errors == {"rate_limited": 1}
