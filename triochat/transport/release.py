"""Releasing a byte stream at once, as cheaply as the stream allows."""

from __future__ import annotations

import trio


async def release(stream: trio.abc.Stream) -> None:
    """Close ``stream`` now, without any goodbye.

    A socket closes synchronously; ``trio.aclose_forcefully`` would spend a
    cancel scope and a checkpoint on it, which shows up in the cost of every
    short connection (handshake benchmark). Other streams (memory streams in
    tests) get ``aclose_forcefully``.
    """
    if isinstance(stream, trio.SocketStream):
        stream.socket.close()
    else:
        await trio.aclose_forcefully(stream)
