"""How a resumed client merges its replay: the rules :class:`Resumption` enforces, without sockets.

The scenario itself runs against real servers in test_scenarios.py and
test_broken_server.py; these cases cover orders a healthy server never sends.
"""

from __future__ import annotations

from harness.scenarios.resume import Resumption, as_line
from harness.tally import Book, Tally
from harness.wire import counted_text, now_ns
from triochat.protocol.events import (
    HistoryPage,
    Joined,
    Left,
    LeftReason,
    Members,
    Message,
    ServerEvent,
)

ROOM = "r"
ME = "me"


def message(seq: int, n: int) -> Message:
    return Message(room=ROOM, seq=seq, from_="s", text=counted_text(0, n, now_ns()), ts=1.0)


def resume(events: list[ServerEvent], after: int = 3) -> tuple[Resumption, Tally]:
    tally = Tally()
    tally.take_line(as_line(Joined(room=ROOM, nick=ME, seq=after, ts=1.0)), now_ns())
    tally.follow(Book([4]))
    merge = Resumption(tally, ROOM, ME, after)
    for event in events:
        merge.take(event, now_ns())
    return merge, tally


def test_joined_waits_for_the_replay() -> None:
    merge, tally = resume(
        [
            Joined(room=ROOM, nick=ME, seq=7, ts=1.0),
            HistoryPage(room=ROOM, events=[message(4, 0), message(5, 1)]),
            HistoryPage(
                room=ROOM, events=[Left(room=ROOM, nick="x", reason=LeftReason.PART, seq=6, ts=1)]
            ),
            Members(room=ROOM, nicks=[ME]),
            message(8, 2),
        ]
    )
    assert merge.violations == []
    assert merge.done_ns is not None
    assert (merge.pages, merge.replayed_messages) == (2, 2)
    assert tally.seq_defects == 0
    assert tally.received() == 3
    assert tally.last_seq(ROOM) == 8


def test_a_live_event_before_the_replay_is_a_violation() -> None:
    merge, _ = resume(
        [
            Joined(room=ROOM, nick=ME, seq=5, ts=1.0),
            message(6, 1),
            HistoryPage(room=ROOM, events=[message(4, 0)]),
        ]
    )
    assert merge.violations[0] == "live message (seq 6) before the replay"
    assert "a history page while live" in merge.violations


def test_a_replay_that_repeats_what_the_client_had_is_a_violation() -> None:
    merge, tally = resume(
        [
            Joined(room=ROOM, nick=ME, seq=5, ts=1.0),
            HistoryPage(room=ROOM, events=[message(3, 0), message(4, 1)]),
            Members(room=ROOM, nicks=[ME]),
        ]
    )
    assert merge.violations == ["replayed seqs 3..4 (2 events), expected 4..4 (1 events)"]
    assert tally.seq_defects == 1
