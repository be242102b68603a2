"""A shard's members against a real server: the ping barrier (:class:`SyncOrder`), and
the answers to the server's keepalive that keep idle members connected."""

from __future__ import annotations

import trio

from harness.shard import OpenOrder, Shard, SyncOrder
from tests.server.helpers import until
from triochat.client import Client, open_client
from triochat.protocol.events import Ack
from triochat.server import Server, ServerConfig, serve

ROOM = "lobby"
MESSAGES = 400
MEMBERS = 20
KEEPALIVE_PINGS = 15
"""Pings a tcp member answers before the check: far past the unanswered ws member's drop."""


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


async def test_idle_members_answer_the_servers_keepalive_and_stay(nursery: trio.Nursery) -> None:
    """The server pings an idle member (a line over tcp, a frame over ws) and drops it when
    no answer comes within ``keepalive_timeout``: the swarm answers both kinds."""
    config = ServerConfig(port=0, tcp_port=0, keepalive_interval=0.1, keepalive_timeout=1.0)
    server: Server = await nursery.start(serve, config)
    shard = Shard(nursery)
    urls = [server.url("tcp"), server.url("ws")]
    opened = await shard.open(OpenOrder(urls, [f"k{i}" for i in range(4)], 0, ROOM, 10.0))
    assert opened.per_url == {urls[0]: 2, urls[1]: 2}
    members = shard.swarm.members
    tcp = [member for member in members if not member.ws]
    before = [member.tally.events for member in tcp]

    def pinged_enough() -> bool:
        return all(
            m.tally.events >= b + KEEPALIVE_PINGS or not m.alive
            for m, b in zip(tcp, before, strict=True)
        )

    with trio.fail_after(10):
        await until(pinged_enough)  # tallies count as the swarm reads, and signal nothing
    assert [member.alive for member in members] == [True] * 4
    await shard.close()
