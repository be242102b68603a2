"""Nodes sharing rooms through a real ``redis-server`` under faults: a node killed,
Redis killed and restarted, a publication lost, Redis emptied.

Every test checks the promise one server makes: each member gets every event of
its room once, in seq order, with no hole, and nothing acknowledged is lost.
Nodes that must die for real are ``triochat serve`` processes; the others run in
this process (:func:`tests.server.nodes.run_nodes`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import trio

from tests.redisd import RedisServer, needs_redis, start_redis
from tests.server.conftest import TEST_CONFIG
from tests.server.helpers import settle_join, skip_until
from tests.server.nodes import run_nodes
from triochat.client import Client, open_client
from triochat.errors import ConnectError, ConnectionLost, Rejected
from triochat.protocol import encode
from triochat.protocol.events import Ack, Error, HistoryPage, Joined, Left, Message, Notice
from triochat.server.relay import RoomKeys

pytestmark = needs_redis

LEASE = 1.0
"""The nodes' lease in these tests (``--redis-lease``): a dead node's members leave
within about 1.2 of it."""
FAST = replace(TEST_CONFIG, redis_lease=LEASE)
RESTARTS = int(os.environ.get("TRIOCHAT_TEST_REDIS_RESTARTS", "3"))
"""Redis restarts in the restart test (the closing note of the scale-out issue ran 20)."""


@asynccontextmanager
async def node_process(redis: RedisServer, node: str) -> AsyncIterator[tuple[trio.Process, str]]:
    """A ``triochat serve --redis`` process; yields it and its TCP URL."""
    process = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "triochat",
            "serve",
            "--port=0",
            "--tcp-port=0",
            "--rate-limit=0",
            f"--redis={redis.url}",
            f"--node-id={node}",
            f"--redis-lease={LEASE}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        out = b""
        while out.count(b"\n") < 3:
            chunk = await process.stdout.receive_some()
            assert chunk, f"node {node} exited early: {out!r}"
            out += chunk
        using, ws, tcp = out.decode().splitlines()[:3]
        assert using == f"using redis {redis.url}", using
        assert ws.startswith("listening ws://"), ws
        assert tcp.startswith("listening tcp://"), tcp
        yield process, tcp.removeprefix("listening ")
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


class Watcher:
    """A member that records the seq of every event of its room it gets."""

    def __init__(self, client: Client, room: str = "lobby") -> None:
        self.client = client
        self.room = room
        self.seqs: list[int] = []

    async def until(self, seq: int) -> None:
        """Read until the room's event ``seq`` (or a later one) has come."""
        while not self.seqs or self.seqs[-1] < seq:
            event = await self.client.receive()
            if isinstance(event, HistoryPage) and event.room == self.room:
                # The past comes right after the client's own ``joined``, and precedes it.
                self.seqs[-1:-1] = [past.seq for past in event.events]
            elif getattr(event, "room", None) == self.room and getattr(event, "seq", None):
                self.seqs.append(event.seq)  # type: ignore[union-attr]

    async def answer(self) -> Ack | Error:
        """The answer to this member's ``say`` (recording what comes before it): its ack,
        or ``unavailable`` while Redis is down (not acknowledged, so not promised)."""
        while True:
            event = await self.client.receive()
            if isinstance(event, Ack):
                await self.until(event.seq)  # an ack follows its message: already here
                return event
            if isinstance(event, Error):
                assert event.code == "unavailable", event
                return event
            if getattr(event, "room", None) == self.room and getattr(event, "seq", None):
                self.seqs.append(event.seq)  # type: ignore[union-attr]

    def check(self, acked: list[int]) -> None:
        """Each event once, in order, no hole; every acknowledged message among them."""
        seqs = self.seqs
        assert seqs == list(range(seqs[0], seqs[-1] + 1)), seqs
        assert set(acked) <= set(seqs), sorted(set(acked) - set(seqs))


@asynccontextmanager
async def _claimed(url: str, nick: str, resume: dict[str, int]) -> AsyncIterator[Client]:
    """Connect as ``nick`` once it is free (a dead node's nick is held until its lease
    runs out), as a reconnecting client does."""
    while True:
        try:
            async with open_client(url, nick, resume=resume) as client:
                yield client
                return
        except Rejected as exc:
            if exc.code != "nick_taken":
                raise
        await trio.sleep(LEASE / 10)  # a client's retry period, as the TUI's reconnect


async def test_a_killed_node_s_members_leave_and_resume_elsewhere() -> None:
    """SIGKILL a node: its member is announced as left within the bound, its nick is
    free once its lease runs out, and it resumes on another node with no gap and no
    duplicate."""
    with tempfile.TemporaryDirectory(prefix="tc-r-") as folder, start_redis(Path(folder)) as redis:
        async with (
            node_process(redis, "doomed") as (doomed, doomed_url),
            node_process(redis, "survivor") as (_, survivor_url),
            open_client(survivor_url, "bob") as bob,
            open_client(doomed_url, "ada") as ada_client,
        ):
            with trio.fail_after(20):
                ada = Watcher(ada_client)
                acked = []
                for n in range(5):
                    await bob.say("lobby", f"before {n}")
                    acked.append((await skip_until(bob, Ack)).seq)
                await ada.until(acked[-1])
                killed = time.monotonic()
                doomed.send_signal(signal.SIGKILL)
                left = await skip_until(bob, Left, nick="ada")
                announced = time.monotonic() - killed
                assert left.reason == "disconnected"
                assert announced < 1.2 * LEASE + 2, announced
                await bob.say("lobby", "after")
                acked.append((await skip_until(bob, Ack)).seq)
                async with _claimed(survivor_url, "ada", {"lobby": ada.seqs[-1]}) as again:
                    freed = time.monotonic() - killed
                    joined = await skip_until(again, Joined, nick="ada")
                    page = await skip_until(again, HistoryPage)
                    ada.seqs += [past.seq for past in page.events] + [joined.seq]
                assert freed < LEASE + 2, freed
                print(f"left announced after {announced:.2f} s, nick free after {freed:.2f} s")
                ada.check(acked)
                assert left.seq in ada.seqs


async def test_redis_restarts_lose_nothing_acknowledged() -> None:
    """Kill ``redis-server`` (``appendfsync always``) and restart it while members of
    three nodes talk: every acknowledged message reaches everyone, once, in order;
    every node is subscribed again after each restart."""
    async with run_nodes(FAST, appendfsync="always") as nodes:
        urls = [nodes.url("tcp"), nodes.url("ws"), nodes.url("tcp")]
        async with (
            open_client(urls[0], "ada") as ada,
            open_client(urls[1], "bob") as bob,
            open_client(urls[2], "cy") as cy,
        ):
            watchers = [Watcher(c) for c in (ada, bob, cy)]
            acked: list[int] = []
            with trio.fail_after(30 + 10 * RESTARTS):
                listening = await _listeners(nodes.redis)
                assert listening == 3, "the balancer spread the members over three nodes"
                for restart in range(RESTARTS + 1):
                    for sender in (ada, bob, cy):
                        await sender.say("lobby", f"round {restart}")
                    for watcher in watchers:
                        answer = await watcher.answer()
                        if isinstance(answer, Ack):
                            acked.append(answer.seq)
                    if restart < RESTARTS:
                        nodes.redis.kill()
                        nodes.redis.restart()
                        await _until_listeners(nodes.redis, listening)
                top = max(acked)
                for watcher in watchers:
                    await watcher.until(top)
                    watcher.check(acked)
            assert len(acked) >= 3, acked


async def _until_listeners(redis: RedisServer, count: int) -> None:
    """Poll Redis (another process: nothing to wait on) until ``count`` listen again."""
    while await _listeners(redis) != count:  # noqa: ASYNC110
        await trio.sleep(0.05)


async def _listeners(redis: RedisServer) -> int:
    """How many connections listen on the lobby's channel (``PUBSUB NUMSUB``)."""
    channel = RoomKeys.of("lobby").channel
    answer = await trio.to_thread.run_sync(redis.cli, "PUBSUB", "NUMSUB", channel)
    return int(answer.split()[1])


async def test_a_lost_publication_is_read_from_the_stream_at_the_next_event() -> None:
    """An event that reaches the stream but never pub/sub (written here by hand, as a
    lost publication) is delivered in its place once the next event shows the jump,
    long before any heartbeat (a 60 s lease beats every 12 s)."""
    async with (
        run_nodes(replace(FAST, redis_lease=60.0), count_=2) as nodes,
        open_client(nodes.servers[0].url("tcp"), "ada") as ada,
        open_client(nodes.servers[1].url("tcp"), "bob") as bob,
    ):
        with trio.fail_after(5):
            await settle_join(bob)
            watcher = Watcher(bob)
            lost = _write_unpublished(nodes.redis, "lobby", "lost one")
            await ada.say("lobby", "after the lost one")
            acked = (await skip_until(ada, Ack)).seq
            assert acked == lost + 1
            await watcher.until(acked)
            watcher.check([lost, acked])


async def test_a_lost_last_publication_is_found_by_the_heartbeat() -> None:
    """With no event after it, the lost one is found by the heartbeat's re-check."""
    async with (
        run_nodes(FAST, count_=2) as nodes,
        open_client(nodes.servers[1].url("tcp"), "bob") as bob,
    ):
        with trio.fail_after(5):
            await settle_join(bob)
            watcher = Watcher(bob)
            lost = _write_unpublished(nodes.redis, "lobby", "lost, nothing after")
            await watcher.until(lost)
            watcher.check([lost])


async def test_a_repeated_publication_is_delivered_once() -> None:
    """Pub/sub repeating an event (published again here by hand) changes nothing."""
    async with (
        run_nodes(replace(FAST, redis_lease=60.0), count_=2) as nodes,
        open_client(nodes.servers[0].url("tcp"), "ada") as ada,
        open_client(nodes.servers[1].url("tcp"), "bob") as bob,
    ):
        with trio.fail_after(5):
            await settle_join(bob)
            watcher = Watcher(bob)
            await ada.say("lobby", "once")
            first = (await skip_until(ada, Ack)).seq
            await watcher.until(first)
            keys = RoomKeys.of("lobby")
            entry = nodes.redis.cli("XRANGE", keys.log, f"{first}-0", f"{first}-0")
            line = entry.splitlines()[-1]
            epoch = nodes.redis.cli("HGET", keys.meta, "e")
            nodes.redis.cli("PUBLISH", keys.channel, f"{first} {epoch} {line}")
            await ada.say("lobby", "twice?")
            second = (await skip_until(ada, Ack)).seq
            await watcher.until(second)
            watcher.check([first, second])


def _write_unpublished(redis: RedisServer, room: str, text: str) -> int:
    """Append a message to ``room`` in Redis as ``tc_event`` would, without publishing."""
    keys = RoomKeys.of(room)
    seq = int(redis.cli("HINCRBY", keys.meta, "s", "1"))
    line = encode(Message(room=room, seq=seq, from_="ghost", text=text, ts=1.0))
    redis.cli("XADD", keys.log, f"{seq}-0", "l", line.decode())
    return seq


async def test_an_emptied_redis_is_a_new_history_for_every_client() -> None:
    """FLUSHALL (Redis lost everything): every node closes its clients, which come back
    to a new ``server_id`` and so know their seqs mean nothing there any more."""
    async with run_nodes(FAST, count_=2) as nodes:
        async with open_client(nodes.url("tcp"), "ada") as ada:
            assert ada.welcome is not None
            before = ada.welcome.server_id
            with trio.fail_after(10):
                await settle_join(ada)
                nodes.redis.cli("FLUSHALL")
                notice = await skip_until(ada, Notice)
                assert notice.code == "shutting_down"
        with trio.fail_after(10):
            # A node that has not noticed yet may welcome it, then close it: it tries again.
            while not await _welcomed_anew(nodes.url("ws"), before):
                pass


async def _welcomed_anew(url: str, before: str) -> bool:
    """Whether a client connecting to ``url`` is welcomed with another ``server_id``."""
    try:
        async with open_client(url, "ada") as again:
            assert again.welcome is not None
            return again.welcome.server_id != before
    except (ConnectError, ConnectionLost, Rejected):
        return False


async def test_readyz_says_when_a_node_cannot_reach_redis() -> None:
    """``/readyz`` is 503 while Redis is down (a balancer sends new clients elsewhere),
    200 again once it is back; ``/healthz`` stays 200 throughout: the node lives."""
    async with run_nodes(FAST, count_=1) as nodes:
        url = nodes.servers[0].url("ws")
        with trio.fail_after(20):
            assert await _probe(url, "/readyz") == 200
            nodes.redis.kill()
            while await _probe(url, "/readyz") != 503:  # noqa: ASYNC110
                await trio.sleep(LEASE / 10)  # the next heartbeat finds out
            assert await _probe(url, "/healthz") == 200
            nodes.redis.restart()
            while await _probe(url, "/readyz") != 200:  # noqa: ASYNC110
                await trio.sleep(LEASE / 10)


async def _probe(url: str, path: str) -> int:
    """The status of ``GET path`` on a WebSocket listener."""
    host, _, port = url.removeprefix("ws://").rpartition(":")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        head = b""
        while b"\r\n" not in head:
            chunk = await stream.receive_some()
            assert chunk, head
            head += chunk
    return int(head.split()[1])
