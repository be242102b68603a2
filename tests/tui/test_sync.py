"""Resume bookkeeping without a network: events in, what to show out."""

from __future__ import annotations

from triochat.protocol.events import Joined, Left, LeftReason, Message, RoomEvent
from tui.sync import GAVE_UP, HELD_LIMIT, HISTORY_CHANGED, LOST, RoomSync


def msg(seq: int, text: str, who: str = "bob", ts: float | None = None) -> Message:
    return Message(room="lobby", seq=seq, from_=who, text=text, ts=ts or 1000.0 + seq)


def joined(seq: int, nick: str = "ada", ts: float | None = None) -> Joined:
    return Joined(room="lobby", nick=nick, seq=seq, ts=ts or 1000.0 + seq)


def texts(events: list[RoomEvent]) -> list[str]:
    return [f"<{e.nick}>" if isinstance(e, Joined | Left) else e.text for e in events]


def first_join(sync: RoomSync, seq: int, past: list[RoomEvent]) -> list[RoomEvent]:
    sync.own_joined(joined(seq), replay="fresh")
    sync.history(past)
    outcome = sync.members()
    assert outcome.joined == joined(seq)
    return outcome.show


def test_a_fresh_join_shows_the_past_then_live_events_once() -> None:
    sync = RoomSync()
    assert texts(first_join(sync, 3, [msg(1, "a"), msg(2, "b")])) == ["a", "b"]
    assert texts(sync.live(msg(4, "c")).show) == ["c"]
    assert sync.live(msg(4, "c")).show == []  # a duplicate
    assert sync.live(msg(2, "b")).show == []
    assert sync.resume_from() == 4


def test_resume_on_the_same_history_shows_only_what_was_missed() -> None:
    sync = RoomSync()
    first_join(sync, 1, [])
    sync.live(msg(2, "seen"))
    sync.reset_connection()
    assert sync.resume_from() == 2  # the last seq shown: the replay starts after it
    sync.own_joined(joined(6), replay="resumed")
    sync.history(
        [
            msg(3, "x"),
            msg(4, "y"),
            Left(room="lobby", nick="ada", reason=LeftReason.DISCONNECTED, seq=5, ts=1005.0),
        ]
    )
    outcome = sync.members()
    assert texts(outcome.show) == ["x", "y", "<ada>"]
    assert outcome.notes == []
    assert outcome.fetch_before is None
    assert outcome.joined is None  # a reconnect does not announce our own join again
    assert sync.live(msg(6, "dup")).show == []
    assert texts(sync.live(msg(7, "z")).show) == ["z"]


def test_resume_past_retention_says_messages_were_lost() -> None:
    sync = RoomSync()
    first_join(sync, 2, [])
    sync.own_joined(joined(900), replay="resumed")
    sync.history([msg(500, "kept")])
    outcome = sync.members()
    assert texts(outcome.show) == ["kept"]
    assert outcome.notes == [LOST]


def test_a_stale_resume_drops_the_replay_and_refills_with_recent_history() -> None:
    sync = RoomSync()
    first_join(sync, 1, [])
    for seq in range(2, 10):
        sync.live(msg(seq, f"old {seq}"))
    sync.forget()  # the welcome named another history
    assert sync.resume_from() is None
    sync.own_joined(joined(12, ts=5000.0), replay="stale")
    sync.history([msg(10, "slice", ts=5010.0), msg(11, "of another numbering", ts=5011.0)])
    outcome = sync.members()
    assert outcome.show == []
    assert outcome.fetch_before == 12
    assert outcome.notes == [HISTORY_CHANGED]
    assert sync.live(msg(13, "live during refill", ts=5013.0)).show == []  # held
    recent: list[RoomEvent] = [joined(1, "bob", 5001.0)]
    recent += [msg(s, f"new {s}", ts=5000.0 + s) for s in range(2, 12)]
    refill = sync.history(recent)
    assert texts(refill.show) == ["<bob>"] + [f"new {s}" for s in range(2, 12)]
    assert not refill.live
    assert texts(refill.released) == ["live during refill"]
    assert sync.resume_from() == 13
    assert sync.live(msg(13, "dup")).show == []


def test_a_stale_resume_to_a_lower_numbering_refills_too() -> None:
    sync = RoomSync()
    first_join(sync, 1, [])
    for seq in range(2, 10):
        sync.live(msg(seq, f"old {seq}"))
    sync.forget()
    sync.own_joined(joined(4, ts=5000.0), replay="stale")
    sync.history([])
    outcome = sync.members()
    assert outcome.fetch_before == 4
    refill = sync.history([joined(1, "bob", 5001.0), msg(2, "n1"), msg(3, "n2")])
    assert texts(refill.show) == ["<bob>", "n1", "n2"]
    assert texts(sync.live(msg(5, "next")).show) == ["next"]


def test_a_refill_that_never_comes_is_given_up_without_losing_live_events() -> None:
    sync = RoomSync()
    first_join(sync, 5, [])
    sync.forget()
    sync.own_joined(joined(2, ts=7000.0), replay="stale")
    sync.history([])
    sync.members()
    for seq in range(3, 3 + HELD_LIMIT):
        assert sync.live(msg(seq, str(seq))).show == []
    outcome = sync.live(msg(3 + HELD_LIMIT, "last"))
    assert outcome.notes == [GAVE_UP]
    assert len(outcome.released) == HELD_LIMIT + 1


def test_a_dropped_connection_forgets_a_half_done_join() -> None:
    sync = RoomSync()
    first_join(sync, 1, [])
    sync.own_joined(joined(3), replay="resumed")
    sync.reset_connection()
    assert not sync.joining
    assert sync.members().show == []
