"""``python -m bench.harness_receive``: what the harness's receive path costs per delivery.

The lean clients of ``harness --workers`` (harness/swarm.py) on real loopback
TCP connections, fed by this process with counted message lines the way a
server writes them (bare, as the TCP listener does, or each in a WebSocket
frame); each round is one :meth:`Swarm.read_ready` call, the code a worker
runs for every wakeup. Printed: user and system CPU per line received, when
each read brings one line (many clients, each getting little) and when reads
bring several. No server is involved, so this is the harness's part alone;
docs/harness.md has the figures of whole runs.
"""

from __future__ import annotations

import argparse
import itertools
import math
import resource
import socket
import time
from dataclasses import dataclass

import msgspec
import trio

from harness.swarm import Member, Swarm
from harness.tally import Book
from harness.wire import counted_text, now_ns
from triochat.client import parse_url
from triochat.transport.wsproto_ws import text_frame

SETTLE = 0.002
"""Seconds for the kernel to carry what was written to the readers' sockets."""
DRAIN_S = 10.0
"""How long the lines a busy kernel carried late may take, at most."""


def _pairs(count: int, per_sender: int, ws: bool) -> tuple[Swarm, list[socket.socket], Book]:
    """``count`` lean clients following a phase of ``per_sender`` messages from each of
    ``count`` senders (no more than the rounds need, as in a run); ``ws``: they take
    what they read for WebSocket frames."""
    swarm = Swarm()
    book = Book([per_sender] * count)
    listener = socket.create_server(("127.0.0.1", 0), backlog=count)
    writers = []
    address = parse_url("ws://127.0.0.1:1" if ws else "tcp://127.0.0.1:1")
    for index in range(count):
        reader = socket.create_connection(listener.getsockname())
        writer, _ = listener.accept()
        reader.setblocking(False)
        member = Member(index, "n", address, trio.socket.from_stdlib_socket(reader), reader, ws)
        swarm.add(member, [])
        member.tally.follow(book)
        writers.append(writer)
    listener.close()
    return swarm, writers, book


@dataclass(frozen=True)
class Cost:
    """What the timed rounds cost per line received, and how many lines a read brought."""

    user_us: float
    system_us: float
    lines_per_read: float


def measure(clients: int, lines_per_read: int, rounds: int, *, ws: bool = False) -> Cost:
    """``rounds`` rounds with ``lines_per_read`` lines written to each socket before each
    (``ws``: each line a WebSocket text frame, as the server writes them)."""
    per_sender = math.ceil(rounds * lines_per_read / clients)
    swarm, writers, book = _pairs(clients, per_sender, ws)
    seq = n = 0
    user = system = 0.0
    for _ in range(rounds):
        batch = bytearray()
        for _ in range(lines_per_read):
            seq += 1
            text = counted_text(seq % clients, n // clients, now_ns())
            event = {"type": "message", "room": "h0000-broadcast", "seq": seq}
            event |= {"from": "h0000-broadc-1", "text": text, "ts": 1.0}
            line = msgspec.json.encode(event) + b"\n"
            batch += text_frame(line) if ws else line
            n += 1
        for writer in writers:
            writer.sendall(batch)
        time.sleep(SETTLE)
        before = resource.getrusage(resource.RUSAGE_SELF)
        swarm.read_ready()
        after = resource.getrusage(resource.RUSAGE_SELF)
        user += after.ru_utime - before.ru_utime
        system += after.ru_stime - before.ru_stime
    timed = book.delivered
    cost = Cost(user * 1e6 / timed, system * 1e6 / timed, swarm.lines / swarm.reads)
    _drain(swarm, book, clients * lines_per_read * rounds)
    swarm.release()
    for writer in writers:
        writer.close()
    return cost


def _drain(swarm: Swarm, book: Book, lines: int) -> None:
    """Read (untimed) what a busy kernel had not carried in time for the last round, and
    check that every line written was counted exactly once."""
    deadline = time.monotonic() + DRAIN_S
    while book.delivered < lines and time.monotonic() < deadline:
        time.sleep(SETTLE)
        swarm.read_ready()
    assert book.delivered == lines, (book.delivered, lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.harness_receive")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"{args.clients} lean clients over loopback TCP, {args.rounds} rounds each")
    for ws, per_read in itertools.product((False, True), (1, 4, 16)):
        cost = measure(args.clients, per_read, args.rounds, ws=ws)
        print(
            f"{'ws ' if ws else 'tcp'} {per_read:>2} line(s) written per round,"
            f" {cost.lines_per_read:.2f} per read:"
            f" {cost.user_us:.2f} µs user + {cost.system_us:.2f} µs system"
            f" = {cost.user_us + cost.system_us:.2f} µs per delivery"
        )


if __name__ == "__main__":
    main()
