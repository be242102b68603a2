"""A deliberately broken "server" for the harness's own tests: a real server behind a bad proxy.

:class:`FaultyProxy` listens on 127.0.0.1 and forwards each TCP connection to a
real triochat server, cutting the server-to-client direction into lines so it
can misbehave the way a buggy server would: drop, duplicate or reorder one
counted message, end a receiver's connection mid-phase, swallow ``left`` or
``error`` events, drop or duplicate a message inside a ``history`` replay or
drop the replay altogether, keep a session alive after its client vanished (a
leak), buffer without bound for a client that stopped reading (a server that
never evicts), or forward to every client through one lock (a fan-out that
awaits every client). With no fault it is transparent, which the tests also
check, so each failure is the fault's doing.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass

import trio

from triochat.client import parse_url
from triochat.protocol import LineSplitter

RECEIVE = 64 * 1024
COUNTED = b'"text":"h:'
HISTORY = b'{"type":"history"'


@dataclass(frozen=True)
class Faults:
    drop_counted: int = 0
    """Drop the Nth counted message line the proxy forwards (1-based; 0: never)."""
    duplicate_counted: int = 0
    swap_counted: int = 0
    """Hold the Nth counted message line back and send it after the next line."""
    history: str = ""
    """What to do to the first ``history`` page that replays a counted message:
    ``drop`` it, or ``drop_event`` / ``duplicate_event`` one counted message in it."""
    drop_left: bool = False
    drop_errors: bool = False
    keep_upstream: bool = False
    """When a client goes, keep its server connection open (the server leaks it)."""
    unbounded: bool = False
    """Read from the server regardless of the client (the server never sees a slow reader)."""
    serialize: bool = False
    """Forward to every client under one lock: one stalled client stalls everyone."""
    close_after_counted: int = 0
    """End the connection that carries the Nth counted message line toward the client
    once it is forwarded (a server that evicts a receiver mid-phase; 0: never). What
    the client sent is still forwarded: a message it sent before it saw the end is
    the server's to deliver, and one lost in the proxy would be a loss of the test's."""
    lines_per_s: float = 0.0
    """Forward at most this many counted lines a second to each client (0: no cap): a
    server slower than the offered rate, whose queue (and latency) grows all along."""


class FaultyProxy:
    def __init__(self, upstream: str, faults: Faults) -> None:
        address = parse_url(upstream)
        self._host, self._port = address.host, address.port
        self.faults = faults
        self._counted = 0
        self._history_faulted = False
        self._lock = trio.Lock()
        self.url = ""

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        self.url = f"tcp://127.0.0.1:{port}"
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            task_status.started(self.url)

    async def _handle(self, client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream(self._host, self._port)
        async with client, server, trio.open_nursery() as nursery:
            nursery.start_soon(self._upstream, client, server, nursery.cancel_scope)
            await self._downstream(server, client)
            nursery.cancel_scope.cancel()

    async def _upstream(
        self, client: trio.SocketStream, server: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            while data := await client.receive_some(RECEIVE):
                await server.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        if self.faults.keep_upstream:
            # Leak the session, not the client's socket: close it as a server answering the
            # client's close would, so a polite client is not left waiting out its close grace.
            await client.aclose()
            await trio.sleep_forever()
        scope.cancel()

    async def _downstream(self, server: trio.SocketStream, client: trio.SocketStream) -> None:
        if self.faults.unbounded:
            await self._downstream_unbounded(server, client)
            return
        splitter = LineSplitter(2**26)
        held: list[bytes] = []
        try:
            while data := await server.receive_some(RECEIVE):
                before = self._counted
                out = b"".join(self._mutate(line, held) for line in splitter.feed(data))
                closing = before < self.faults.close_after_counted <= self._counted
                if out:
                    await self._send(client, out)
                    if self.faults.lines_per_s:  # the cap is the fault, not a synchronisation
                        await trio.sleep(out.count(COUNTED) / self.faults.lines_per_s)
                if closing:
                    await client.send_eof()
                    await _discard(server)
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            if self.faults.keep_upstream:  # the client is gone; the server must not know
                await _discard(server)

    async def _send(self, client: trio.SocketStream, data: bytes) -> None:
        if self.faults.serialize:
            async with self._lock:
                await client.send_all(data)
        else:
            await client.send_all(data)

    def _mutate(self, line: bytes, held: list[bytes]) -> bytes:
        faults = self.faults
        out = line + b"\n"
        if held and COUNTED in line:
            # Released behind the next *counted* line, so the two messages really
            # swap (behind an ack or a presence event, the swap would be invisible).
            out, held[:] = out + held[0], []
        if line.startswith(HISTORY) and COUNTED in line and faults.history:
            return self._mutate_history(line, out)
        if COUNTED in line:
            self._counted += 1
            if self._counted == faults.drop_counted:
                return b""
            if self._counted == faults.duplicate_counted:
                return out + line + b"\n"
            if self._counted == faults.swap_counted:
                held.append(line + b"\n")
                return b""
        if faults.drop_left and line.startswith(b'{"type":"left"'):
            return b""
        if faults.drop_errors and line.startswith(b'{"type":"error"'):
            return b""
        return out

    def _mutate_history(self, line: bytes, out: bytes) -> bytes:
        """Apply ``faults.history`` to the first replay page that carries a counted message."""
        if self._history_faulted:
            return out
        self._history_faulted = True
        rest = out[len(line) + 1 :]  # ``out`` is this line, then any line held back
        if self.faults.history == "drop":
            return rest
        page = json.loads(line)
        events = page["events"]
        index = next(i for i, e in enumerate(events) if str(e.get("text", "")).startswith("h:"))
        if self.faults.history == "drop_event":
            del events[index]
        else:
            events.insert(index, events[index])
        changed = json.dumps(page, separators=(",", ":")).encode() + b"\n"
        return changed + rest

    async def _downstream_unbounded(
        self, server: trio.SocketStream, client: trio.SocketStream
    ) -> None:
        queue: deque[bytes] = deque()
        more = trio.Event()
        ended = False

        async def pump() -> None:
            nonlocal ended
            try:
                while data := await server.receive_some(RECEIVE):
                    queue.append(data)
                    more.set()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            ended = True
            more.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump)
            try:
                while queue or not ended:
                    await more.wait()
                    more = trio.Event()
                    while queue:
                        await client.send_all(queue.popleft())
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            nursery.cancel_scope.cancel()


async def _discard(server: trio.SocketStream) -> None:
    try:
        while await server.receive_some(RECEIVE):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
