"""Two nodes on a real three-master Redis Cluster: rooms live on the shards their
hash tags pick, are published on shard channels, and behave as on one server."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import trio

from tests.redisd import needs_redis, start_cluster
from tests.server.conftest import TEST_CONFIG
from tests.server.helpers import skip_until
from triochat.client import Client, open_client
from triochat.protocol.events import (
    Ack,
    DirectMessage,
    HistoryPage,
    Message,
    RoomInfo,
    Rooms,
    Topic,
)
from triochat.server import Server, serve

pytestmark = needs_redis

ROOMS = ["x", "y", "z", "lobby"]
"""Rooms whose keys land on all three masters (slots 9129, 13192, 1003 and 9530 of
the thirds ``redis-cli --cluster create`` gives three masters)."""


async def test_rooms_on_every_shard_reach_members_on_both_nodes() -> None:
    with (
        tempfile.TemporaryDirectory(prefix="tc-c-") as folder,
        start_cluster(Path(folder)) as cluster,
    ):
        slots = [int(cluster.cli("CLUSTER", "KEYSLOT", f"tc:{{r:{room}}}:m")) for room in ROOMS]
        assert {slot * 3 // 16384 for slot in slots} == {0, 1, 2}, slots
        async with trio.open_nursery() as nursery:
            nodes: list[Server] = []
            for n, url in enumerate(cluster.urls[:2]):
                config = replace(TEST_CONFIG, redis_url=url, redis_cluster=True, node_id=f"n{n}")
                nodes.append(await nursery.start(serve, config))
            with trio.fail_after(20):
                async with (
                    open_client(nodes[0].url("tcp"), "ada", rooms=ROOMS) as ada,
                    open_client(nodes[1].url("ws"), "bob", rooms=ROOMS) as bob,
                ):
                    sent = {}
                    topics = {"z": "on shard three"}
                    for room in ROOMS:
                        await ada.say(room, f"hi {room}")
                        sent[room] = (await skip_until(ada, Ack, room=room)).seq
                    assert await _messages_by_room(bob, len(ROOMS)) == {
                        room: (sent[room], f"hi {room}") for room in ROOMS
                    }
                    await bob.dm("ada", "psst")
                    assert (await skip_until(ada, DirectMessage)).text == "psst"
                    await bob.topic("z", "on shard three")
                    await skip_until(ada, Topic, room="z")
                    await ada.list_rooms()
                    assert await skip_until(ada, Rooms) == Rooms(
                        rooms=[
                            RoomInfo(room=room, members=2, topic=topics.get(room))
                            for room in sorted(ROOMS)
                        ]
                    )
            for node in nodes:
                node.stop()


async def _messages_by_room(client: Client, rooms: int) -> dict[str, tuple[int, str]]:
    """(seq, text) of the first message of each room, live or in the past a join
    brought (a message ordered before the client's own ``joined`` is history)."""
    seen: dict[str, tuple[int, str]] = {}
    while len(seen) < rooms:
        event = await client.receive()
        past = event.events if isinstance(event, HistoryPage) else [event]
        for one in past:
            if isinstance(one, Message):
                seen.setdefault(one.room, (one.seq, one.text))
    return seen
