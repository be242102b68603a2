"""``python -m bench.harness_receive``: what the harness's receive path costs per delivery.

The lean clients of ``harness --workers`` (harness/swarm.py) on real loopback
TCP connections, fed by this process with counted message lines the way a
server would write them; each round is one :meth:`Swarm.read_ready` call, the
code a worker runs for every wakeup. Printed: user and system CPU per line
received, when each read brings one line (many clients, each getting little)
and when reads bring several. No server is involved, so this is the harness's
part alone; docs/harness.md has the figures of whole runs.
"""

from __future__ import annotations

import argparse
import resource
import socket
import time

import msgspec
import trio

from harness.swarm import Member, Swarm
from harness.tally import Book
from harness.wire import counted_text, now_ns
from triochat.client import parse_url

SETTLE = 0.002
"""Seconds for the kernel to carry what was written to the readers' sockets."""


def _pairs(count: int) -> tuple[Swarm, list[socket.socket], Book]:
    swarm = Swarm()
    book = Book([10_000] * count)
    listener = socket.create_server(("127.0.0.1", 0), backlog=count)
    writers = []
    address = parse_url("tcp://127.0.0.1:1")
    for index in range(count):
        reader = socket.create_connection(listener.getsockname())
        writer, _ = listener.accept()
        reader.setblocking(False)
        member = Member(index, "n", address, trio.socket.from_stdlib_socket(reader), reader, False)
        swarm.add(member, [])
        member.tally.follow(book)
        writers.append(writer)
    listener.close()
    return swarm, writers, book


def measure(clients: int, lines_per_read: int, rounds: int) -> tuple[float, float]:
    """User and system µs per line, ``lines_per_read`` lines waiting on each socket a round."""
    swarm, writers, book = _pairs(clients)
    seq = n = 0
    user = system = 0.0
    for _ in range(rounds):
        batch = bytearray()
        for _ in range(lines_per_read):
            seq += 1
            text = counted_text(seq % clients, n // clients, now_ns())
            event = {"type": "message", "room": "h0000-broadcast", "seq": seq}
            event |= {"from": "h0000-broadc-1", "text": text, "ts": 1.0}
            batch += msgspec.json.encode(event) + b"\n"
            n += 1
        for writer in writers:
            writer.sendall(batch)
        time.sleep(SETTLE)
        before = resource.getrusage(resource.RUSAGE_SELF)
        swarm.read_ready()
        after = resource.getrusage(resource.RUSAGE_SELF)
        user += after.ru_utime - before.ru_utime
        system += after.ru_stime - before.ru_stime
    lines = clients * lines_per_read * rounds
    assert book.delivered == lines, (book.delivered, lines)
    swarm.release()
    for writer in writers:
        writer.close()
    return user * 1e6 / lines, system * 1e6 / lines


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.harness_receive")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"{args.clients} lean clients over loopback TCP, {args.rounds} rounds each")
    for per_read in (1, 4, 16):
        user, system = measure(args.clients, per_read, args.rounds)
        print(
            f"{per_read:>2} line(s) per read: {user:.2f} µs user + {system:.2f} µs system"
            f" = {user + system:.2f} µs per delivery"
        )


if __name__ == "__main__":
    main()
