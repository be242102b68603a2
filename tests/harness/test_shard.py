"""A shard's members against a real server: the ping barrier (:class:`SyncOrder`)."""

from __future__ import annotations

import trio

from harness.shard import OpenOrder, Shard, SyncOrder
from triochat.client import Client, open_client
from triochat.protocol.events import Ack
from triochat.server import Server, ServerConfig, serve

ROOM = "lobby"
MESSAGES = 400
MEMBERS = 20


async def test_a_pong_means_everything_queued_before_it_was_read(nursery: trio.Nursery) -> None:
    """Every message the server accepted before the barrier has been counted by every member
    once the barrier returns: the server answers a ping behind what it queued."""
    config = ServerConfig(port=None, tcp_port=0, rate_limit=1e6, burst=MESSAGES)
    server: Server = await nursery.start(serve, config)
    shard = Shard(nursery)
    nicks = [f"m{i}" for i in range(MEMBERS)]
    opened = await shard.open(OpenOrder([server.url("tcp")], nicks, 0, ROOM, 10.0))
    assert opened.connected == MEMBERS
    async with open_client(server.url("tcp"), "talker", rooms=[ROOM]) as talker:
        for n in range(MESSAGES):
            await talker.say(ROOM, f"line {n}", id=n)
        last = await _last_ack(talker)  # the server has queued every line for everyone
        synced = await shard.sync(SyncOrder(within=10.0))
        seen = [member.tally.last_seq(ROOM) for member in shard.swarm.members]
    assert (synced.asked, synced.answered) == (MEMBERS, MEMBERS)
    assert [member.tally.pongs for member in shard.swarm.members] == [1] * MEMBERS
    assert seen == [last.seq] * MEMBERS
    await shard.close()


async def _last_ack(talker: Client) -> Ack:
    async for event in talker:
        if isinstance(event, Ack) and event.id == MESSAGES - 1:
            return event
    raise AssertionError("the talker's connection ended before its last ack")
