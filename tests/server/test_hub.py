"""The hub's rules without sockets: fan-out, eviction, history, flood control."""

from __future__ import annotations

import pytest

from triochat.protocol import ErrorCode, ProtocolError, decode_server
from triochat.protocol.events import Left, LeftReason, Message
from triochat.server.config import ServerConfig
from triochat.server.hub import Hub, Member, newest_within
from triochat.server.outbox import Outbox
from triochat.server.ratelimit import TokenBucket
from triochat.server.roomlog import RoomLog


class Inbox:
    """A peer that keeps what it is given, up to ``capacity`` lines."""

    def __init__(self, hub: Hub, capacity: int = 10_000) -> None:
        self.hub = hub
        self.capacity = capacity
        self.lines: list[bytes] = []
        self.member: Member | None = None
        self.evicted = False

    def deliver(self, line: bytes, *, replay: bool = False) -> bool:
        if len(self.lines) >= self.capacity and not replay:
            return False
        self.lines.append(line)
        return True

    def queue(self, line: bytes) -> None:
        self.lines.append(line)

    def flush(self) -> bool:
        return len(self.lines) <= self.capacity

    def evict(self) -> None:
        self.evicted = True
        assert self.member is not None
        self.hub.detach(self.member, LeftReason.SLOW_CONSUMER)


def _attach(hub: Hub, nick: str, capacity: int = 10_000) -> tuple[Inbox, Member]:
    inbox = Inbox(hub, capacity)
    inbox.member = hub.attach(inbox, nick)
    hub.join(inbox.member, "lobby")
    return inbox, inbox.member


def test_fanout_encodes_once_and_hands_every_member_the_same_bytes() -> None:
    hub = Hub(ServerConfig())
    inboxes = [_attach(hub, f"n{i}")[0] for i in range(5)]
    hub.say(inboxes[0].member, "lobby", "hello")  # type: ignore[arg-type]
    said = [next(x for x in inbox.lines if b'"hello"' in x) for inbox in inboxes]
    assert all(line is said[0] for line in said)
    assert isinstance(decode_server(said[0]), Message)


def test_full_peers_are_evicted_after_the_fanout_and_the_rest_hear_it_once() -> None:
    hub = Hub(ServerConfig())
    talker, member = _attach(hub, "talker")
    full_a, _ = _attach(hub, "full_a", capacity=0)
    full_b, _ = _attach(hub, "full_b", capacity=0)
    hub.say(member, "lobby", "x")
    assert full_a.evicted
    assert full_b.evicted
    lefts = [e for e in map(decode_server, talker.lines) if isinstance(e, Left)]
    assert sorted((e.nick, e.reason) for e in lefts) == [
        ("full_a", LeftReason.SLOW_CONSUMER),
        ("full_b", LeftReason.SLOW_CONSUMER),
    ]
    assert hub.room_nicks("lobby") == ["talker"]


def test_seq_is_consecutive_per_room() -> None:
    hub = Hub(ServerConfig())
    _inbox, member = _attach(hub, "ada")
    hub.join(member, "dev")
    seqs = [
        hub.say(member, "lobby", "a"),
        hub.say(member, "dev", "b"),
        hub.say(member, "lobby", "c"),
    ]
    assert seqs == [2, 2, 3]


def test_rename_to_a_taken_nick_in_other_case_is_refused() -> None:
    hub = Hub(ServerConfig())
    _attach(hub, "ada")
    _, bob = _attach(hub, "bob")
    with pytest.raises(ProtocolError) as caught:
        hub.rename(bob, "ADA")
    assert caught.value.code is ErrorCode.NICK_TAKEN
    hub.rename(bob, "Bob")  # one's own nick in another case is fine
    assert hub.room_nicks("lobby") == ["ada", "Bob"]


def test_roomlog_pages_and_trims_by_retention() -> None:
    log = RoomLog(retention=3)
    for seq in range(1, 9):
        log.append(seq, b"%d" % seq)
    assert log.before(None, 10) == [b"6", b"7", b"8"]
    assert log.before(8, 2) == [b"6", b"7"]
    assert log.between(6, 9) == [b"7", b"8"]
    assert log.between(0, 9) == [b"6", b"7", b"8"]
    with pytest.raises(ValueError, match="out of order"):
        log.append(42, b"x")


def test_token_bucket_allows_burst_then_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5) is True  # one token back after half a second at 2/s
    assert bucket.take(0.5) is False
    assert all(TokenBucket(0, 1, 0.0).take(0.0) for _ in range(1000))


def test_outbox_counts_every_put_line_against_both_bounds_at_once() -> None:
    box = Outbox(max_events=3, max_bytes=10)
    assert box.put(b"12345")
    assert not box.put(b"123456")  # the byte bound holds at once, not at the next flush
    assert box.put(b"12345", replay=True)  # a replay page counts like any other line
    assert not box.put(b"1", replay=True)
    assert box.put(b"shutting down", last_word=True)  # only the last word is taken when full
    assert not box.put(b"1")  # the event bound
    box = Outbox(max_events=100, max_bytes=10)
    assert box.put(b"1234567890")
    assert box.flush()
    box.queue(b"1")  # fan-out's unchecked append...
    assert not box.flush()  # ...is caught when the outbox is flushed


def test_durable_hub_delivers_nothing_before_the_commit_and_keeps_order() -> None:
    hub = Hub(ServerConfig(), durable=True)
    inbox, member = _attach(hub, "ada")
    assert inbox.lines == []  # joined, history and members wait for the commit
    rows, held = hub.take_unsaved()
    assert [row.seq for row in rows] == [1]
    hub.who(member, None)  # emitted while the group is being written...
    assert inbox.lines == []  # ...so it queues behind it
    hub.release(held)
    kinds = [type(decode_server(line)).__name__ for line in inbox.lines]
    assert kinds == ["Joined", "HistoryPage", "Members"]
    _, held = hub.take_unsaved()
    hub.release(held)
    assert type(decode_server(inbox.lines[-1])).__name__ == "Members"
    assert len(inbox.lines) == 4


@pytest.mark.parametrize(
    ("sizes", "budget", "kept"),
    [
        ([], 10, []),
        ([3, 3, 3], 10, [3, 3, 3]),  # all fit
        ([3, 3, 3], 7, [3, 3]),  # the newest that fit
        ([3, 3, 3], 6, [3, 3]),  # exactly at the budget
        ([1, 9, 20], 10, [20]),  # the newest alone is over: still sent, never an empty page
    ],
)
def test_newest_within_keeps_the_newest_lines_that_fit(
    sizes: list[int], budget: int, kept: list[int]
) -> None:
    lines = [b"x" * n for n in sizes]
    assert [len(line) for line in newest_within(lines, budget)] == kept
