"""The reference peer: a minimal broadcast chat server on the ``websockets`` library.

It speaks just enough of triochat's protocol for the same load generator to
drive it: ``hello`` gets one ``welcome`` line and membership of the hello's
rooms, in one step, so a client holding its welcome is a member; ``say`` gets
the message encoded once and pushed to every member with
``websockets.broadcast()`` (which writes to each connection's transport
without awaiting). No history, no acks, no flood control, no keepalive pings:
this is the peer's best case, the figure the performance targets compare
triochat against.

Run as ``python -m bench.peer --port 0``; it prints ``listening ws://HOST:PORT``
like ``triochat serve`` and stops cleanly on SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

from bench.reference import Rooms, parse_args, welcome


async def _session(rooms: Rooms[ServerConnection], conn: ServerConnection) -> None:
    hello = json.loads(await conn.recv())
    nick, joined = str(hello["nick"]), [str(r) for r in hello.get("rooms") or ["lobby"]]
    # Welcome and membership in one synchronous step: broadcast() writes to the
    # transport without awaiting, so no say can run between the two, and every
    # message line for these rooms reaches the transport after the welcome.
    broadcast([conn], welcome(nick, joined))
    rooms.join(conn, joined)
    try:
        async for data in conn:
            text = data if isinstance(data, str) else data.decode()
            for line in text.splitlines():
                event = json.loads(line)
                if event.get("type") == "say" and event.get("room") in joined:
                    room = event["room"]
                    out = rooms.message(room, nick, event["text"], event.get("id"))
                    broadcast(rooms.members[room], out)
    finally:
        rooms.leave(conn, joined)


async def run(host: str, port: int) -> None:
    rooms: Rooms[ServerConnection] = Rooms()

    async def handler(conn: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):  # a client leaving is not an error
            await _session(rooms, conn)

    stop = asyncio.get_running_loop().create_future()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set_result, None)
    # A deep backlog like trio's default: bursts of connects must not hit SYN retries.
    async with serve(
        handler, host, port, ping_interval=None, compression=None, backlog=4096
    ) as server:
        for sock in server.sockets:
            bound_host, bound_port = sock.getsockname()[:2]
            print(f"listening ws://{bound_host}:{bound_port}", flush=True)
        await stop


def main() -> None:
    args = parse_args("Reference broadcast peer on `websockets`.")
    asyncio.run(run(args.host, args.port))


if __name__ == "__main__":
    main()
