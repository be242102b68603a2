"""A real server in its own thread, a second client over plain WebSockets, and waits.

The app under test runs Trio as a guest of the test's asyncio loop, so the server
gets a thread with its own ``trio.run``: two Trio runs never share a thread.
The second client speaks the wire protocol with the ``websockets`` library (an
independent implementation, on the test's own loop), so nothing in these tests
talks to the server through the code under test except the app.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from websockets.asyncio.client import ClientConnection, connect

from triochat.client import Client, open_client
from triochat.protocol.events import Ack
from triochat.server import Server, ServerConfig, serve

WAIT = 15.0
"""Seconds any single wait may take before the test fails (a loaded CI box, not a target)."""


class ServerThread:
    """``start()`` a server on 127.0.0.1 (port 0 = any free one), ``stop()`` it, start it again."""

    def __init__(
        self,
        db_path: str | None = None,
        *,
        tls: tuple[str, str] | None = None,
        history_limit: int = 0,
    ) -> None:
        self.db_path = db_path
        """A SQLite file for durable history (kept across restarts); None: memory only."""
        self._tls = tls
        """(certfile, keyfile): both listeners speak TLS, and TCP is on too."""
        self._history_limit = history_limit
        self.port = 0
        self.urls: list[str] = []
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._server: Server | None = None
        self._nursery: trio.Nursery | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, port: int | None = None) -> None:
        ready = threading.Event()
        config = ServerConfig(
            port=self.port if port is None else port,
            tcp_port=0 if self._tls else None,
            rate_limit=0,
            db_path=self.db_path,
            certfile=self._tls[0] if self._tls else None,
            keyfile=self._tls[1] if self._tls else None,
            history_limit=self._history_limit or ServerConfig.history_limit,
        )
        self._thread = threading.Thread(target=trio.run, args=(self._main, config, ready))
        self._thread.start()
        if not ready.wait(WAIT):
            raise RuntimeError("the test server did not start")

    async def _main(self, config: ServerConfig, ready: threading.Event) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._server = await nursery.start(self._serve, config)
            self.urls = list(self._server.urls)
            self.port = int(self.urls[0].rsplit(":", 1)[1])
            ready.set()

    async def _serve(self, config: ServerConfig, *, task_status: trio.TaskStatus[Server]) -> None:
        """The server; when it has stopped, so do the bots."""
        await serve(config, task_status=task_status)
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()

    def bot(self, nick: str, rooms: list[str]) -> Bot:
        """A client living in the server's thread (blocking calls): for sync snapshot tests."""
        bot = Bot(self, nick)
        assert self._nursery is not None
        trio.from_thread.run(self._nursery.start, bot.run, rooms, trio_token=self._token)
        return bot

    def call(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def stop(self) -> None:
        """Stop orderly (clients get ``shutting_down`` and a close) and wait until it is gone."""
        if self._thread is None or self._server is None:
            return
        trio.from_thread.run_sync(self._server.stop, trio_token=self._token)
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "the test server did not stop"
        self._thread = self._server = None

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)


class Bot:
    """A triochat client in the server thread; :meth:`say` blocks until the server acked."""

    def __init__(self, server: ServerThread, nick: str) -> None:
        self._server = server
        self.nick = nick
        self._client: Client | None = None
        self._acked: dict[str, trio.Event] = {}

    async def run(self, rooms: list[str], *, task_status: trio.TaskStatus[None]) -> None:
        async with open_client(self._server.url, self.nick, rooms=rooms) as client:
            self._client = client
            task_status.started()
            async for event in client:
                if isinstance(event, Ack) and isinstance(event.id, str) and event.id in self._acked:
                    self._acked[event.id].set()

    def say(self, room: str, text: str, *, action: bool = False) -> None:
        self._server.call(self._say, room, text, action)

    def topic(self, room: str, text: str) -> None:
        """Set the topic (no answer comes but the ``topic`` event: wait on what shows it)."""
        assert self._client is not None
        self._server.call(self._client.topic, room, text)

    async def _say(self, room: str, text: str, action: bool) -> None:
        assert self._client is not None
        ref = f"{len(self._acked)}"
        self._acked[ref] = trio.Event()
        await self._client.say(room, text, ref, action=action)
        with trio.fail_after(WAIT):
            await self._acked[ref].wait()


class Peer:
    """Another person in the chat, speaking NDJSON over WebSocket."""

    def __init__(self, ws: ClientConnection, nick: str) -> None:
        self.ws = ws
        self.nick = nick
        self.events: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read())
        self._changed = asyncio.Event()

    @classmethod
    async def connect(cls, url: str, nick: str, rooms: list[str] | None = None) -> Peer:
        ws = await connect(url)
        peer = cls(ws, nick)
        await peer.send(type="hello", nick=nick, rooms=rooms or ["lobby"])
        await peer.wait_for(lambda e: e["type"] == "welcome")
        return peer

    async def send(self, **event: Any) -> None:
        await self.ws.send(json.dumps(event) + "\n")

    async def say(self, room: str, text: str) -> None:
        """Say ``text`` and return once the server has acknowledged it."""
        ref = f"{self.nick}-{len(self.events)}-{text}"
        await self.send(type="say", room=room, text=text, id=ref)
        await self.wait_for(lambda e: e["type"] == "ack" and e["id"] == ref)

    async def _read(self) -> None:
        async for message in self.ws:
            assert isinstance(message, str)
            self.events.extend(json.loads(line) for line in message.splitlines() if line)
            self._changed.set()

    async def wait_for(self, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        async with asyncio.timeout(WAIT):
            while True:
                found = [e for e in self.events if match(e)]
                if found:
                    return found[0]
                self._changed.clear()
                if self._reader.done():
                    raise AssertionError(f"{self.nick}: connection closed; saw {self.events}")
                await self._changed.wait()

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.wait_for(self._reader, WAIT)

    async def quit(self) -> None:
        """Leave and wait for the server's goodbye. A client-side close returns when the
        WebSocket handshake ends, which may be before the server has freed the nick; the
        server says goodbye only after it has, so the nick is free for the next client."""
        await self.send(type="quit")
        await asyncio.wait_for(self._reader, WAIT)


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) until ``condition()`` holds, letting the app and the network run."""
    try:
        async with asyncio.timeout(WAIT):
            # A poll, not a sleep-as-synchronisation: the screen has no "changed" event.
            while not condition():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None
