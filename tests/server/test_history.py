"""History in SQLite: it survives a restart, and a SIGKILL loses nothing acknowledged."""

from __future__ import annotations

import signal
import sqlite3
from contextlib import closing
from dataclasses import replace
from functools import partial
from pathlib import Path

import trio

from tests.server.conftest import TEST_CONFIG
from tests.server.helpers import expect, settle_join, skip_until
from tests.server.test_cli import serving
from triochat.client import open_client
from triochat.errors import ConnectionLost
from triochat.protocol.events import Ack, HistoryPage, Joined, Left, LeftReason, Message
from triochat.server import Server, serve
from triochat.server.hub import Row
from triochat.server.store import TRIM_EVERY, HistoryStore


async def _chat_then_stop(config: object, texts: list[str]) -> None:
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(serve, config)
        async with open_client(server.url("tcp"), "ada") as ada:
            await settle_join(ada)
            for text in texts:
                await ada.say("lobby", text)
                await skip_until(ada, Ack)
        server.stop()


async def test_seq_and_history_continue_after_a_restart(tmp_path: Path) -> None:
    config = replace(TEST_CONFIG, db_path=str(tmp_path / "h.sqlite3"))
    with trio.fail_after(10):
        await _chat_then_stop(config, ["one", "two"])  # seq 1 joined, 2-3 messages, 4 left
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(serve, config)
            async with open_client(server.url("ws"), "bob") as bob:
                await expect(bob, Joined, nick="bob", seq=5)
                page = await expect(bob, HistoryPage, room="lobby")
                assert [e.seq for e in page.events] == [1, 2, 3, 4]
                assert [getattr(e, "text", None) for e in page.events[1:3]] == ["one", "two"]
                gone = page.events[3]
                assert isinstance(gone, Left)
                assert (gone.nick, gone.reason) == ("ada", LeftReason.DISCONNECTED)
            server.stop()


async def test_shutdown_leaves_left_shutdown_in_the_history(tmp_path: Path) -> None:
    config = replace(TEST_CONFIG, db_path=str(tmp_path / "h.sqlite3"))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(serve, config)
            async with open_client(server.url("ws"), "stayer") as stayer:
                await settle_join(stayer)
                server.stop()
                async for _ in stayer:
                    pass
    with sqlite3.connect(config.db_path or "") as db:
        lines = [bytes(r[0]) for r in db.execute("SELECT line FROM events ORDER BY seq")]
    assert b'"reason":"shutdown"' in lines[-1]


async def _say_until_killed(
    url: str, acked: list[int], *, pad: str = "", task_status: trio.TaskStatus[None]
) -> None:
    """Send as fast as acks allow, keeping every acknowledged seq, until the server dies."""
    try:
        async with open_client(url, "writer", rooms=["crash"]) as writer:
            task_status.started()
            n = 0
            while True:
                for _ in range(20):
                    await writer.say("crash", f"m{n}{pad}", id=n)
                    n += 1
                async for event in writer:
                    if isinstance(event, Ack):
                        acked.append(event.seq)
                        if event.id == n - 1:
                            break
    except ConnectionLost:
        pass


async def test_sigkill_mid_broadcast_loses_nothing_acknowledged(tmp_path: Path) -> None:
    db = tmp_path / "crash.sqlite3"
    acked: list[int] = []
    with trio.fail_after(30):
        async with (
            serving("--port", "0", "--tcp-port", "0", "--db", str(db), "--rate-limit", "0") as (
                proc,
                urls,
            ),
            trio.open_nursery() as nursery,
        ):
            await nursery.start(_say_until_killed, urls[1], acked)
            async with open_client(urls[0], "listener", rooms=["crash"]) as listener:
                async for event in listener:  # let a good number of messages through
                    if isinstance(event, Message) and event.seq > 500:
                        break
                proc.process.send_signal(signal.SIGKILL)
                assert await proc.process.wait() == -signal.SIGKILL
    assert len(acked) > 400
    await _check_nothing_acked_was_lost_and_a_restart_goes_on(db, acked)


async def _check_nothing_acked_was_lost_and_a_restart_goes_on(db: Path, acked: list[int]) -> None:
    with closing(sqlite3.connect(db)) as conn:
        stored = [
            seq for (seq,) in conn.execute("SELECT seq FROM events WHERE room='crash' ORDER BY seq")
        ]
    assert stored == list(range(1, len(stored) + 1)), "seq has a hole"
    assert set(acked) <= set(stored), "an acknowledged message was lost"
    with trio.fail_after(10):
        async with serving("--port", "0", "--tcp-port", "0", "--db", str(db)) as (proc, urls):
            async with open_client(urls[1], "after", rooms=["crash"]) as after:
                await expect(after, Joined, room="crash", seq=len(stored) + 1)
            proc.process.send_signal(signal.SIGTERM)
            assert await proc.process.wait() == 0


async def test_a_database_that_stops_taking_writes_stops_the_server_in_order(
    tmp_path: Path,
) -> None:
    """A full disk: one line in the log, clients closed, exit 1, nothing acknowledged lost."""
    db = tmp_path / "full.sqlite3"
    acked: list[int] = []
    args = ("--port", "0", "--tcp-port", "0", "--db", str(db), "--rate-limit", "0")
    with trio.fail_after(30):
        async with serving(*args, max_file_size=256 << 10) as (proc, urls):
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(_say_until_killed, urls[1], acked, pad="x" * 200))
            assert await proc.process.wait() == 1
            stderr = await proc.stderr()
    assert "Traceback" not in stderr
    assert "cannot save history to" in stderr
    assert stderr.strip().splitlines()[-1].startswith("triochat: cannot save history to")
    # How many groups fit before the file limit depends on how the says were grouped
    # (100 to a few hundred acks): what matters is that some were acknowledged.
    assert len(acked) >= 20, "not one batch was acknowledged before the disk filled"
    await _check_nothing_acked_was_lost_and_a_restart_goes_on(db, acked)


async def test_server_id_is_kept_by_the_database_and_new_without_one(tmp_path: Path) -> None:
    async def welcome_id(config: object) -> str:
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(serve, config)
            async with open_client(server.url("tcp"), "ada") as ada:
                assert ada.welcome is not None
                server_id = ada.welcome.server_id
            server.stop()
        return server_id

    durable = replace(TEST_CONFIG, db_path=str(tmp_path / "h.sqlite3"))
    with trio.fail_after(10):
        first, again = await welcome_id(durable), await welcome_id(durable)
        memory_a, memory_b = await welcome_id(TEST_CONFIG), await welcome_id(TEST_CONFIG)
    assert first == again
    assert len({first, memory_a, memory_b}) == 3


def test_store_keeps_the_retained_events_and_trims_the_rest_in_steps(tmp_path: Path) -> None:
    """Groups of any size, rooms interleaved: ``load`` gives each room's newest
    ``retention`` events, and the file never holds more than a trim step beyond them."""
    path = tmp_path / "h.sqlite3"
    retention, group, last = 10, 7, 1000
    store = HistoryStore(path, retention)
    for start in range(1, last + 1, group):
        seqs = range(start, min(start + group, last + 1))
        store.write([Row(room, seq, 0.0, b'{"seq":%d}\n' % seq) for seq in seqs for room in "ab"])
    past = store.load()
    store.close()
    for room in "ab":
        assert [row.seq for row in past[room]] == list(range(last - retention + 1, last + 1))
        assert past[room][-1].line == b'{"seq":%d}\n' % last
    with closing(sqlite3.connect(path)) as db:
        counts = dict(db.execute("SELECT room, COUNT(*) FROM events GROUP BY room"))
    assert counts.keys() == {"a", "b"}
    for count in counts.values():
        assert retention <= count < retention + TRIM_EVERY + group
