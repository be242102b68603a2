"""Presence in large rooms is written late and together, and never strands anyone's lines.

The hub, the flusher and real outboxes, on trio's MockClock; each client's socket is a
list of the writes it was given.
"""

from __future__ import annotations

import trio
import trio.testing

from triochat.protocol import decode_server
from triochat.protocol.events import Joined, Left, LeftReason
from triochat.server.config import ServerConfig
from triochat.server.hub import LARGE_ROOM, Hub, Member
from triochat.server.outbox import PRESENCE_DELAY_S, Flusher, Outbox


async def presence_written() -> None:
    """On the MockClock: past the presence delay, and the flusher's burst after it."""
    await trio.sleep(2 * PRESENCE_DELAY_S)


class Client:
    """A peer whose outbox writes into ``writes`` at once, as a socket with room would."""

    def __init__(self, hub: Hub, flusher: Flusher, nick: str, max_events: int = 1000) -> None:
        self.writes: list[bytes] = []
        outbox = Outbox(
            max_events, 1 << 20, flusher=flusher, direct=self._write, on_overflow=self.evict
        )
        self.deliver, self.queue, self.flush = outbox.put, outbox.queue, outbox.flush
        self.member: Member = hub.attach(self, nick)

    def _write(self, data: bytes) -> bytes:
        self.writes.append(data)
        return b""

    def evict(self) -> None:
        raise AssertionError("nobody here is slow")

    def events(self) -> list[object]:
        return [decode_server(line) for data in self.writes for line in data.splitlines()]


async def crowd(
    nursery: trio.Nursery, count: int = LARGE_ROOM, max_events: int = 1000
) -> tuple[Hub, Flusher, list[Client]]:
    """``count`` members in room ``big``, each outbox bounded to ``max_events`` (the
    flusher writes a room's presence early at a quarter of it, as the server's does)."""
    hub = Hub(ServerConfig(history_limit=0))
    flusher = Flusher(2, max_events // 4)
    hub.on_fanout, hub.on_presence = flusher.mark_group, flusher.mark_presence
    nursery.start_soon(flusher.run)
    clients = [Client(hub, flusher, f"m{n}", max_events) for n in range(count)]
    for client in clients:
        hub.join(client.member, "big")
        await trio.sleep(PRESENCE_DELAY_S / 10)  # a crowd that came one by one, read as it came
    await presence_written()
    for client in clients:
        client.writes.clear()
    return hub, flusher, clients


async def test_a_burst_of_joins_reaches_a_large_room_in_one_write_per_member(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    hub, flusher, clients = await crowd(nursery)
    for n in range(20):  # one join per burst, all within one presence delay
        hub.join(Client(hub, flusher, f"new{n}").member, "big")
        await trio.sleep(PRESENCE_DELAY_S / 40)
    await presence_written()
    for client in clients:
        assert len(client.writes) == 1
        joined = [e.nick for e in client.events() if isinstance(e, Joined)]
        assert joined == [f"new{n}" for n in range(20)]


async def test_a_member_leaving_gets_the_presence_queued_for_it_and_its_own_left(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Its ``left`` is its own line: the room's later flush no longer includes it."""
    hub, flusher, clients = await crowd(nursery)
    leaver = clients[0]
    hub.join(Client(hub, flusher, "late").member, "big")  # queued for the leaver, not written
    hub.part(leaver.member, "big")
    hub.join(Client(hub, flusher, "later").member, "big")  # the room's newest tuple lacks it
    await presence_written()
    joined, left = leaver.events()
    assert isinstance(joined, Joined)
    assert joined.nick == "late"
    assert isinstance(left, Left)
    assert (left.nick, left.reason, left.seq) == ("m0", LeftReason.PART, 102)


async def test_a_line_for_one_member_is_not_held_behind_its_queued_presence(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    hub, flusher, clients = await crowd(nursery)
    hub.join(Client(hub, flusher, "late").member, "big")
    started = trio.current_time()
    hub.who(clients[1].member, None)  # a reply for one member, behind a queued joined
    await trio.sleep(PRESENCE_DELAY_S / 10)  # MockClock: the flusher's next burst, no later
    assert clients[1].writes, "the reply went out in the next burst, with the joined before it"
    assert trio.current_time() - started < PRESENCE_DELAY_S


async def test_a_burst_of_departures_larger_than_the_bound_evicts_nobody(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Found by the harness at 5,000 clients: 1,000 members quitting at once queued 1,000
    ``left`` for every other member within one presence delay, and the outbox bound
    (1,000) evicted them all, however fast they read. Here: 60 of 160 leave in one
    scheduler turn, against a bound of 40 (a client over its bound fails the test)."""
    hub, _, clients = await crowd(nursery, count=160, max_events=40)
    leaving, staying = clients[:60], clients[60:]
    for client in leaving:
        hub.detach(client.member, LeftReason.QUIT)
    await presence_written()
    for client in staying:
        left = [e.nick for e in client.events() if isinstance(e, Left)]
        assert left == [c.member.nick for c in leaving]
