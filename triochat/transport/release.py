"""Ending a byte stream: at once (:func:`release`), or after the peer's FIN (:func:`linger`)."""

from __future__ import annotations

import trio

LINGER_READ = 64 * 1024


async def release(stream: trio.abc.Stream) -> None:
    """Close ``stream`` now, without any goodbye.

    A socket closes synchronously; ``trio.aclose_forcefully`` would spend a
    cancel scope and a checkpoint on it, which shows up in the cost of every
    short connection (handshake benchmark). Other streams (memory streams in
    tests) get ``aclose_forcefully``. A TLS stream is released by releasing the
    stream under it: a forced close sends no ``close_notify`` anyway, and
    closing the socket can neither wait nor meet a write in progress.
    """
    if isinstance(stream, trio.SSLStream):
        if stream.transport_stream is None:
            return  # unwrapped: :func:`linger` released the stream under it
        stream = stream.transport_stream
    if isinstance(stream, trio.SocketStream):
        stream.socket.close()
    else:
        await trio.aclose_forcefully(stream)


async def linger(stream: trio.abc.Stream) -> None:
    """Our FIN, then read (and drop) until the peer's; the caller bounds the time.

    Closing a socket with unread input makes the kernel send RST, which can
    destroy our last lines before the peer reads them; waiting for the peer's
    EOF first makes the close a flushed one. A peer already gone ends it early.
    The caller releases the stream afterwards.

    TLS has no half-close: our ``close_notify`` stands for the FIN. A peer that
    answers with its own gets the lingering close of the stream under TLS, which
    is then released here (the TLS stream no longer holds it); one that closes,
    or sends more, ends it.
    """
    if isinstance(stream, trio.SSLStream):
        await _linger_tls(stream)
        return
    try:
        if isinstance(stream, trio.abc.HalfCloseableStream):
            await stream.send_eof()
        while await stream.receive_some(LINGER_READ):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
        pass


async def _linger_tls(stream: trio.SSLStream[trio.abc.Stream]) -> None:
    try:
        transport, _ = await stream.unwrap()
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
        return
    try:
        await linger(transport)
    finally:
        await release(transport)
