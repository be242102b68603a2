"""The trio-websocket floor: the original design's batching and nothing else.

Built only on trio-websocket's public API: one task per client reads its
messages, a ``say`` is encoded once and appended to every member's queue, and
each client's writer task drains its whole queue into one ``send_message``. No
validation beyond what the load generator needs, no history, no acks, no flood
control, no keepalive, no bounds on a queue: the cheapest server trio-websocket
allows, so the bench can show how far triochat is from it and which performance
targets that floor already rules out.

It speaks the same protocol subset as ``bench.peer``. Run as
``python -m bench.floor --port 0``; it prints ``listening ws://HOST:PORT`` and
stops cleanly on SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import json

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from bench.reference import Rooms, parse_args, until_signalled, welcome


class Member:
    """One client's queue and the event its writer waits on."""

    __slots__ = ("lines", "ready")

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.ready = trio.Event()

    def put(self, line: str) -> None:
        self.lines.append(line)
        self.ready.set()


async def _writer(ws: WebSocketConnection, member: Member) -> None:
    while True:
        await member.ready.wait()
        member.ready = trio.Event()
        batch, member.lines = member.lines, []
        await ws.send_message("".join(batch))


async def _session(rooms: Rooms[Member], ws: WebSocketConnection) -> None:
    hello = json.loads(await ws.get_message())
    nick, joined = str(hello["nick"]), [str(r) for r in hello.get("rooms") or ["lobby"]]
    member = Member()
    # The writer is the only task that sends on ``ws``, and the welcome heads its
    # queue before the member joins, with no checkpoint between: every broadcast
    # line is queued, and so sent, after the welcome.
    member.put(welcome(nick, joined))
    rooms.join(member, joined)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_writer, ws, member)
            while True:
                data = await ws.get_message()
                text = data if isinstance(data, str) else data.decode()
                for line in text.splitlines():
                    event = json.loads(line)
                    if event.get("type") == "say" and event.get("room") in joined:
                        room = event["room"]
                        out = rooms.message(room, nick, event["text"], event.get("id"))
                        for other in rooms.members[room]:
                            other.put(out)
    finally:
        rooms.leave(member, joined)


async def run(host: str, port: int) -> None:
    rooms: Rooms[Member] = Rooms()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            await _session(rooms, ws)
        except* ConnectionClosed:  # a client leaving is not an error
            pass

    async with until_signalled() as nursery:
        server = await nursery.start(serve_websocket, handler, host, port, None)
        print(f"listening ws://{host}:{server.port}", flush=True)


def main() -> None:
    args = parse_args("The original design's batching on trio-websocket.")
    trio.run(run, args.host, args.port)


if __name__ == "__main__":
    main()
