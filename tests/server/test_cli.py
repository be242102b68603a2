"""``triochat serve`` as a person runs it: a real process, real signals, real ports."""

from __future__ import annotations

import resource
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from functools import partial

import pytest
import trio

from tests.server.helpers import host_port, skip_until
from triochat.client import open_client
from triochat.protocol.events import Notice, Welcome

SERVE = [sys.executable, "-m", "triochat", "serve"]


class Proc:
    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.out = b""
        self.err = b""
        """Everything read from stderr so far."""

    async def read_line(self) -> str:
        assert self.process.stdout is not None
        while b"\n" not in self.out:
            chunk = await self.process.stdout.receive_some()
            assert chunk, f"server exited early: {await self.stderr()}"
            self.out += chunk
        line, self.out = self.out.split(b"\n", 1)
        return line.decode()

    async def wait_for_log(self, text: str) -> None:
        """Read stderr until ``text`` appears (the process keeps running)."""
        assert self.process.stderr is not None
        while text.encode() not in self.err:
            chunk = await self.process.stderr.receive_some()
            assert chunk, f"server exited early: {self.err.decode()}"
            self.err += chunk

    async def stderr(self) -> str:
        """All of stderr, including what :meth:`wait_for_log` already read."""
        assert self.process.stderr is not None
        while chunk := await self.process.stderr.receive_some():
            self.err += chunk
        return self.err.decode()


@asynccontextmanager
async def serving(
    *args: str, max_files: int | None = None, max_file_size: int | None = None
) -> AsyncIterator[tuple[Proc, list[str]]]:
    """Start ``triochat serve args``; yield it with the URLs of its two ``listening`` lines.

    ``max_files`` caps the server's open descriptors (RLIMIT_NOFILE);
    ``max_file_size`` the size of any file it writes (RLIMIT_FSIZE; Python
    ignores SIGXFSZ, so a write past it fails with EFBIG, as on a full disk).
    """
    limits = [
        (resource.RLIMIT_NOFILE, max_files),
        (resource.RLIMIT_FSIZE, max_file_size),
    ]
    wanted = [(which, value) for which, value in limits if value is not None]
    process = await trio.lowlevel.open_process(
        [*SERVE, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=partial(_set_limits, wanted) if wanted else None,
    )
    proc = Proc(process)
    try:
        lines = [await proc.read_line(), await proc.read_line()]
        assert all(line.startswith("listening ") for line in lines), lines
        yield proc, [line.removeprefix("listening ") for line in lines]
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


def _set_limits(limits: list[tuple[int, int]]) -> None:
    """Runs in the child before exec."""
    for which, value in limits:
        resource.setrlimit(which, (value, value))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_serve_prints_listeners_and_stops_cleanly_on_signal(
    signum: int, ws_engine: str
) -> None:
    with trio.fail_after(20):
        args = ("--port", "0", "--tcp-port", "0", "--ws-engine", ws_engine)
        async with serving(*args) as (proc, urls):
            assert urls[0].startswith("ws://127.0.0.1:")
            assert not urls[0].endswith(":0")
            assert urls[1].startswith("tcp://127.0.0.1:")
            assert not urls[1].endswith(":0")
            async with open_client(urls[0], "ada") as ada:
                proc.process.send_signal(signum)
                await skip_until(ada, Notice, code="shutting_down")
            assert await proc.process.wait() == 0
            assert "Traceback" not in await proc.stderr()


async def test_taken_port_is_one_clear_line_and_status_1() -> None:
    with trio.fail_after(20), socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = await trio.run_process(
            [*SERVE, "--port", str(port), "--tcp-port", "0"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 1
    assert result.stderr.decode().strip() == (
        f"triochat: cannot listen for ws on 127.0.0.1:{port}: address already in use"
    )


async def test_restart_on_the_same_ports_right_after_a_stop() -> None:
    ws_port, tcp_port = _free_port(), _free_port()
    args = ("--port", str(ws_port), "--tcp-port", str(tcp_port))
    with trio.fail_after(30):
        for _ in range(2):
            async with serving(*args) as (proc, urls):
                assert urls == [f"ws://127.0.0.1:{ws_port}", f"tcp://127.0.0.1:{tcp_port}"]
                async with open_client(urls[0], "ada"):
                    pass  # a connection existed, so its socket passes through TIME_WAIT
                proc.process.send_signal(signal.SIGTERM)
                assert await proc.process.wait() == 0


def test_help_documents_every_option() -> None:
    out = subprocess.run([*SERVE, "--help"], capture_output=True, text=True, check=True).stdout
    for option in (
        "--host",
        "--port",
        "--tcp-port",
        "--rate-limit",
        "--burst",
        "--handshake-timeout",
        "--keepalive-interval",
        "--drain-timeout",
        "--ws-engine",
    ):
        assert option in out
    assert "default: 5000" in out
    assert "default: 5001" in out
    assert "127.0.0.1" in out


async def test_out_of_descriptors_is_waited_out_and_serving_goes_on() -> None:
    with trio.fail_after(30), ExitStack() as sockets:
        async with serving("--port", "0", "--tcp-port", "0", max_files=40) as (proc, urls):
            address = host_port(urls[1])
            for _ in range(40):  # more than the server can hold; the rest wait in the backlog
                sockets.enter_context(socket.create_connection(address))
            await proc.wait_for_log("cannot accept: Too many open files; retrying every 0.1 s")
            sockets.close()  # descriptors come back as the server sees these go
            async with open_client(urls[1], "ada") as ada:
                assert isinstance(ada.welcome, Welcome)
            await proc.wait_for_log("accepting again after")
            proc.process.send_signal(signal.SIGTERM)
            assert await proc.process.wait() == 0
            stderr = await proc.stderr()
            assert "Traceback" not in stderr
            assert stderr.count("cannot accept") == 1, "one warning per episode, not per retry"
