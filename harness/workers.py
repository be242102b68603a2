"""Worker processes (``--workers``): each hosts one :class:`~harness.shard.Shard`.

A worker is ``python -m harness.workers``, started fresh (nothing inherited
but the environment). It reads orders on stdin and writes answers on stdout,
each a msgpack message after its 4-byte length, in order, one answer per
order; its stderr is the coordinator's. It runs in a session of its own, so a
terminal's Ctrl-C (sent to the whole foreground process group, and possibly
while the worker is still starting) reaches only the coordinator, which
decides when workers stop: it closes their stdin (a worker stops at once when
its stdin ends, whatever it is doing) or, failing that, kills them.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from typing import TypeVar

import msgspec
import trio

from harness.shard import Answer, Failed, Order, Shard

LENGTH = 4
_encoder = msgspec.msgpack.Encoder()
_orders = msgspec.msgpack.Decoder(Order)
_answers = msgspec.msgpack.Decoder(Answer)
T = TypeVar("T")
KILL_GRACE = 5.0
"""Seconds a worker has to exit after its stdin closes, before it is killed."""


class WorkerFailed(Exception):
    """A worker process died or reported an error; the message says which and why."""


def default_workers() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0))


async def _read_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


async def _read_frame(stream: trio.abc.ReceiveStream) -> bytes | None:
    head = await _read_exactly(stream, LENGTH)
    if head is None:
        return None
    return await _read_exactly(stream, int.from_bytes(head))


def _frame(message: object) -> bytes:
    body = _encoder.encode(message)
    return len(body).to_bytes(LENGTH) + body


class RemoteShard:
    """A shard in a worker process: the same steps as :class:`Shard`, over a pipe."""

    def __init__(self, number: int, process: trio.Process) -> None:
        self.number = number
        self._process = process
        assert process.stdin is not None
        assert process.stdout is not None
        self._stdin = process.stdin
        self._stdout = process.stdout

    async def handle(self, order: Order) -> Answer:
        try:
            await self._stdin.send_all(_frame(order))
        except trio.BrokenResourceError:  # it died before reading the order
            body = None
        else:
            body = await _read_frame(self._stdout)
        if body is None:
            code = await self._process.wait()
            raise WorkerFailed(f"worker {self.number} ended (exit status {code})")
        answer = _answers.decode(body)
        if isinstance(answer, Failed):
            raise WorkerFailed(f"worker {self.number}: {answer.error}")
        return answer


Handler = Callable[[Order], Awaitable[Answer]]


@asynccontextmanager
async def open_shards(count: int) -> AsyncIterator[list[Handler]]:
    """``count`` shards: in this process for 1, else one worker process each."""
    if count == 1:
        shards: list[Shard] = []
        try:
            async with trio.open_nursery() as nursery:
                shards.append(Shard(nursery))
                try:
                    yield [shards[0].handle]
                finally:
                    nursery.cancel_scope.cancel()
        finally:  # its reader has stopped: release what a run cut short did not close
            for shard in shards:
                shard.swarm.release()
        return
    async with trio.open_nursery() as nursery:
        processes = [await _start(nursery) for _ in range(count)]
        try:
            yield [RemoteShard(i, p).handle for i, p in enumerate(processes)]
        finally:
            with trio.CancelScope(shield=True):
                await _stop(processes)


async def _start(nursery: trio.Nursery) -> trio.Process:
    command = [sys.executable, "-m", "harness.workers"]
    process: trio.Process = await nursery.start(_run_process, command)
    return process


async def _run_process(
    command: Sequence[str], *, task_status: trio.TaskStatus[trio.Process]
) -> None:
    await trio.run_process(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        check=False,
        start_new_session=True,
        task_status=task_status,
    )


async def _stop(processes: list[trio.Process]) -> None:
    for process in processes:
        if process.stdin is not None:
            await process.stdin.aclose()
    with trio.move_on_after(KILL_GRACE):
        for process in processes:
            await process.wait()
    for process in processes:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def each(handlers: list[Handler], orders: Sequence[Order]) -> list[Answer]:
    """Send ``orders[i]`` to ``handlers[i]``, all at once; the answers in the same order."""
    answers: list[Answer | None] = [None] * len(handlers)

    async def one(i: int) -> None:
        answers[i] = await handlers[i](orders[i])

    async with trio.open_nursery() as nursery:
        for i in range(len(handlers)):
            nursery.start_soon(one, i)
    return [answer for answer in answers if answer is not None]


def expect(kind: type[T], answers: list[Answer]) -> list[T]:
    found: list[T] = [answer for answer in answers if isinstance(answer, kind)]
    if len(found) != len(answers):
        raise WorkerFailed(f"expected {kind.__name__} from every worker, got {answers!r}")
    return found


async def every(handlers: list[Handler], order: Order, kind: type[T]) -> list[T]:
    """The same ``order`` to every handler, all at once; their answers, each a ``kind``."""
    return expect(kind, await each(handlers, [order] * len(handlers)))


# --- the worker's side ------------------------------------------------------------------


def _raise_open_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        # Should it fail, the coordinator's connect check reports what could not connect.
        with suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _serve() -> None:
    """Carry out orders until stdin ends; then stop at once, whatever step is under way
    (the coordinator has gone, or is done with this worker)."""
    answers = trio.lowlevel.FdStream(os.dup(1))
    send, receive = trio.open_memory_channel[bytes](1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_read_orders, send, nursery.cancel_scope)
        shard = Shard(nursery)
        async for body in receive:
            try:
                answer = await shard.handle(_orders.decode(body))
            except Exception as exc:  # reported to the coordinator, which fails the scenario
                traceback.print_exc()
                answer = Failed(f"{type(exc).__name__}: {exc}")
            await answers.send_all(_frame(answer))


async def _read_orders(send: trio.MemorySendChannel[bytes], everything: trio.CancelScope) -> None:
    orders = trio.lowlevel.FdStream(os.dup(0))
    async with send:
        while (body := await _read_frame(orders)) is not None:
            await send.send(body)
    everything.cancel()


def main() -> None:
    _raise_open_files()
    trio.run(_serve)


if __name__ == "__main__":
    main()
