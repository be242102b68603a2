"""Trio as a guest on Textual's asyncio loop.

Theory of operation
-------------------
:func:`trio.lowlevel.start_guest_run` runs a Trio program on the thread of a
running asyncio loop: Trio's scheduler ticks are callbacks the loop runs
(``call_soon``/``call_soon_threadsafe``) and only Trio's wait for I/O happens in
a helper thread. Trio tasks and Textual handlers therefore never run at the same
time, and a Trio task may call ``post_message`` on the app directly.

The other direction needs Trio's own door: :meth:`TrioGuest.call_soon` goes
through the run's :class:`trio.lowlevel.TrioToken`, so the callable runs inside
Trio, where it may ``send_nowait`` on a memory channel.

Ownership: a :class:`TrioGuest` owns one run. :meth:`aclose` cancels it and
waits until Trio reports it done, so when it returns no Trio task is left and
every socket the run opened is closed. The app calls it before its loop ends; a
guest run abandoned by a closing loop would leak its sockets and its I/O thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from outcome import Outcome  # trio's own dependency; only its type is used here

log = logging.getLogger(__name__)


class TrioGuest:
    def __init__(self) -> None:
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._done: asyncio.Future[None] | None = None
        self._started: asyncio.Event = asyncio.Event()

    @property
    def running(self) -> bool:
        """Started and not yet finished."""
        return self._done is not None and not self._done.done()

    @property
    def finished(self) -> bool:
        return self._done is not None and self._done.done()

    def start(self, main: Callable[[], Awaitable[None]]) -> None:
        """Start ``main`` as a Trio guest of the running asyncio loop."""
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        trio.lowlevel.start_guest_run(
            self._root,
            main,
            run_sync_soon_threadsafe=loop.call_soon_threadsafe,
            run_sync_soon_not_threadsafe=loop.call_soon,
            done_callback=self._finished,
            host_uses_signal_set_wakeup_fd=True,
        )

    async def _root(self, main: Callable[[], Awaitable[None]]) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as self._scope:
            self._started.set()
            await main()

    def _finished(self, result: Outcome[None]) -> None:
        _report(result)
        assert self._done is not None
        if not self._done.done():
            self._done.set_result(None)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Run ``fn(*args)`` inside Trio soon; False if the run is over (or not yet begun)."""
        if self._token is None or not self.running:
            return False
        try:
            self._token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            return False
        return True

    def cancel(self) -> None:
        """Ask the run to stop; :meth:`aclose` waits for it."""
        if self._scope is not None:
            self.call_soon(self._scope.cancel)

    async def aclose(self, grace: float = 5.0) -> None:
        """Cancel the run and wait until Trio has finished it (all tasks, all sockets)."""
        if self._done is None:
            return
        if not self._done.done():
            await self._started.wait()
            self.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(self._done), grace)
        except TimeoutError:
            log.error("the Trio side did not stop within %.1f s", grace)  # noqa: TRY400

    async def wait(self) -> None:
        """Until the run has finished by itself."""
        if self._done is not None:
            await asyncio.shield(self._done)


def _report(result: Outcome[None]) -> None:
    try:
        result.unwrap()
    except BaseException as exc:  # the network side crashed: logged, not raised into Textual
        if not isinstance(exc, trio.Cancelled):
            log.error("the Trio side failed: %r", exc, exc_info=exc)  # noqa: TRY400
