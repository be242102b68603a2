"""The outbox's writes on real sockets: it writes what fits at once, never out of order."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from triochat.errors import ConnectionLost
from triochat.server.outbox import SAVE_WAIT_S, Flusher, Outbox, OutboxClosed
from triochat.transport.tcp import StreamConnection

LINES = [f"{n:05d}:{'x' * 993}\n".encode() for n in range(400)]  # 1,000 bytes each
READ_TIMEOUT = 10.0


def _pair(sndbuf: int | None = None) -> tuple[StreamConnection, socket.socket]:
    """A connection as the server holds it, and the peer's end (a blocking stdlib socket).

    The peer reads synchronously, so a test can make room in the buffer and act
    before any trio task (the writer) gets a turn; its reads give up after
    ``READ_TIMEOUT`` seconds rather than hang the test.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    theirs.settimeout(READ_TIMEOUT)
    if sndbuf is not None:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    return StreamConnection(stream, max_line=1 << 20), theirs


def _outbox(conn: StreamConnection, flusher: Flusher | None = None) -> Outbox:
    return Outbox(10_000, 10 << 20, flusher=flusher or Flusher(turns=0), direct=conn.direct)


def _read_exactly(peer: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = peer.recv(size - len(data))
        assert chunk, "the server end closed early"
        data += chunk
    return bytes(data)


async def test_a_flush_writes_at_once_when_the_socket_has_room() -> None:
    conn, peer = _pair()
    box = _outbox(conn)
    for line in LINES[:3]:
        assert box.put(line)
    box.flush()  # no writer task exists: only the direct write can deliver this
    assert len(box) == 0
    assert _read_exactly(peer, 3000) == b"".join(LINES[:3])
    peer.close()


@pytest.mark.parametrize(("max_events", "max_bytes"), [(2, 1 << 20), (1000, 2500)])
async def test_a_burst_over_the_bound_is_refused_whole_even_with_room_in_the_socket(
    max_events: int, max_bytes: int
) -> None:
    """Fan-out appends unchecked; the flush is where the bound holds, and it holds
    for an idle connection too: nothing of the burst is written, the caller evicts."""
    conn, peer = _pair()
    box = Outbox(max_events, max_bytes, flusher=Flusher(turns=0), direct=conn.direct)
    for line in LINES[:3]:
        box.queue(line)
    assert not box.flush()
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(1)
    peer.close()


async def test_what_does_not_fit_goes_to_the_writer_and_nothing_overtakes_it() -> None:
    conn, peer = _pair(sndbuf=8192)
    box = _outbox(conn)
    first, second = LINES[:300], LINES[300:]
    for line in first:
        assert box.put(line)
    box.flush()
    assert len(box) == 0  # part written, the rest held for the writer
    assert not box.sent_all  # held bytes count as unsent
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drain_quietly, box, conn)
            await trio.testing.wait_all_tasks_blocked()  # the writer is stuck in its send
            # Make room, then queue and flush before the writer can run again: a
            # direct write now would land in the middle of the writer's batch.
            head = _read_what_is_there(peer)
            for line in second:
                assert box.put(line)
            box.flush()
            rest = await trio.to_thread.run_sync(_read_exactly, peer, 400_000 - len(head))
            box.seal()
    assert head + rest == b"".join(LINES)
    peer.close()


def _read_what_is_there(peer: socket.socket) -> bytes:
    data = bytearray()
    peer.setblocking(False)
    try:
        while chunk := peer.recv(1 << 16):
            data += chunk
    except BlockingIOError:
        pass
    peer.settimeout(READ_TIMEOUT)
    return bytes(data)


async def _drain_quietly(box: Outbox, conn: StreamConnection) -> None:
    with pytest.raises(OutboxClosed):
        await box.drain(conn.stream)


async def test_a_closed_socket_is_never_written_even_if_its_number_is_reused() -> None:
    conn, peer = _pair()
    box = _outbox(conn)
    await conn.abort()
    # The lowest free descriptor numbers are handed out first: the new pair
    # (very likely) reuses the one the closed socket had.
    newcomer, newcomer_peer = socket.socketpair()
    newcomer_peer.setblocking(False)
    assert box.put(LINES[0])
    box.flush()
    assert not box.sent_all  # held, for the writer's send to meet the error...
    with pytest.raises(ConnectionLost):
        await box.drain(conn.stream)  # ...which reports the loss
    with pytest.raises(BlockingIOError):
        newcomer_peer.recv(10)  # nothing went to the newcomer
    for sock in (peer, newcomer, newcomer_peer):
        sock.close()


async def test_a_closed_outbox_sends_what_it_had_and_drops_what_fan_out_still_queues() -> None:
    conn, peer = _pair()
    box = _outbox(conn)
    fan_out = box.queue  # what the hub holds for this client
    assert box.put(LINES[0])
    box.seal()
    fan_out(LINES[1])  # e.g. a delivery held for a commit, released after the close
    assert box.put(LINES[2])  # swallowed too
    with trio.fail_after(5):
        await _drain_quietly(box, conn)
    assert _read_what_is_there(peer) == LINES[0]
    peer.close()


async def test_a_flush_due_during_a_commit_waits_for_that_one_commit_only(
    nursery: trio.Nursery,
) -> None:
    conn, peer = _pair()
    flusher = Flusher(turns=0)
    box = _outbox(conn, flusher)
    nursery.start_soon(flusher.run)
    with flusher.committing():
        assert box.put(LINES[0])
        await trio.testing.wait_all_tasks_blocked()
        assert len(box) == 1  # held back while a history group is being saved...
    with flusher.committing():
        await trio.testing.wait_all_tasks_blocked()
        assert len(box) == 0  # ...but only that one: a steady stream of commits cannot starve it
    assert _read_what_is_there(peer) == LINES[0]
    peer.close()


async def test_a_stalled_commit_holds_a_flush_back_for_save_wait_at_most(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    conn, peer = _pair()
    flusher = Flusher(turns=0)
    box = _outbox(conn, flusher)
    nursery.start_soon(flusher.run)
    with flusher.committing():  # a group whose write does not finish while we watch
        assert box.put(LINES[0])
        await trio.testing.wait_all_tasks_blocked()
        assert len(box) == 1  # held back, as while any group is saved...
        await trio.sleep(2 * SAVE_WAIT_S)  # (virtual time: the clock jumps)
        assert len(box) == 0  # ...but not for longer than SAVE_WAIT_S
        assert _read_what_is_there(peer) == LINES[0]
    peer.close()


async def test_the_writer_is_started_once_and_only_when_a_flush_leaves_bytes_behind() -> None:
    conn, peer = _pair(sndbuf=8192)
    box = _outbox(conn)
    starts: list[None] = []
    assert box.put(LINES[0])  # queued before the session starts its writer (a welcome)...
    box.start(lambda: starts.append(None))  # what the session does: start a drain() task
    assert starts == []  # ...is the flusher's to write, not a reason for a task
    box.flush()
    assert starts == []  # the socket took it: no task needed
    assert _read_exactly(peer, 1000) == LINES[0]
    for line in LINES:
        assert box.put(line)
    box.flush()
    assert starts == [None]  # the socket could not take it all: now the writer is needed
    assert box.put(LINES[0])
    box.flush()
    box.seal()
    assert starts == [None]  # started once; from then on it is woken, never started again
    peer.close()
