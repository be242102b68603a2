"""A replay larger than the outbox bound is streamed: whole and in order for a reader, bounded
for a client that does not read."""

from __future__ import annotations

import trio

from tests.server.helpers import fill, settle_join, skip_until, stalled
from triochat.client import open_client
from triochat.protocol import decode_server
from triochat.protocol.events import (
    Hello,
    HistoryPage,
    Joined,
    Members,
    Message,
    ServerEvent,
)
from triochat.server import Server

ACROSS_NODES = True

LONG = "y" * 7900
"""300 of these are 2.4 MB of history: several outbox bounds (1 MiB) of replay."""
FILL = 300


class LineReader:
    """Reads a raw stream line by line (its tiny receive buffer stalls the server's writes)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._rest = b""

    async def next(self) -> ServerEvent:
        while b"\n" not in self._rest:
            chunk = await self.stream.receive_some(1 << 16)
            assert chunk, "the server closed the connection"
            self._rest += chunk
        line, self._rest = self._rest.split(b"\n", 1)
        return decode_server(line)


async def test_a_resume_past_the_bound_arrives_whole_then_live_in_seq_order(
    server: Server,
) -> None:
    with trio.fail_after(30):
        async with open_client(server.url("tcp"), "talker") as talker:
            await settle_join(talker)
            await fill(talker, "lobby", FILL, LONG)
            hello = Hello(nick="reader", resume={"lobby": 0})
            reader = LineReader(await stalled(server.url("tcp"), hello))
            # Once the reader is in (on another node, its join is ordered a little later)...
            await skip_until(talker, Joined, nick="reader")
            # ...said while the reader's replay is stalled in its socket: owed after the replay.
            for n in range(FILL, FILL + 20):
                await talker.say("lobby", f"{n}:short")
            await skip_until(talker, Message, text=f"{FILL + 19}:short")
            seen = await _read_until(reader, f"{FILL + 19}:short")
            await reader.stream.aclose()
    kinds = [kind for kind, _ in seen]
    own = kinds.index("joined")
    members = kinds.index("members")
    assert own < kinds.index("history") < members
    assert set(kinds[own + 1 : members]) == {"history"}, "the past, then members"
    assert set(kinds[members + 1 :]) <= {"message"}, "then only what was said since"
    seqs = [seq for kind, seq in seen if kind != "members"]
    joined_seq = seqs[0]
    assert sorted(seqs[1:]) == seqs[1:], "in seq order"
    assert seqs[1:] == [s for s in range(1, seqs[-1] + 1) if s != joined_seq], "no gap, no repeat"


async def _read_until(reader: LineReader, text: str) -> list[tuple[str, int]]:
    """``(kind, seq)`` of every lobby event read, history pages opened up, up to ``text``."""
    seen: list[tuple[str, int]] = []
    while True:
        event = await reader.next()
        if isinstance(event, HistoryPage):
            seen += [("history", e.seq) for e in event.events]
        elif isinstance(event, Joined) and event.nick == "reader":
            seen.append(("joined", event.seq))
        elif isinstance(event, Members):
            seen.append(("members", 0))
        elif isinstance(event, Message):
            seen.append(("message", event.seq))
            if event.text == text:
                return seen
