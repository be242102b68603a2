"""``triochat serve`` as a person runs it: a real process, real signals, real ports."""

from __future__ import annotations

import os
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio

from tests.conftest import DataHome
from tests.server.helpers import host_port, skip_until
from triochat import cli
from triochat.client import open_client
from triochat.protocol import encode, rules
from triochat.protocol.events import Hello, HistoryPage, Joined, Notice, Welcome
from triochat.server.config import MIN_MAX_LINE
from triochat.server.hub import Row
from triochat.server.store import HistoryStore

SERVE = [sys.executable, "-m", "triochat", "serve"]


class Proc:
    """A server process: its stdout read line by line, its stderr read all along (by
    :meth:`drain`, so a server that logs much never blocks on a full pipe)."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.out = b""
        self.err = b""
        """Everything read from stderr so far."""
        self._news = trio.lowlevel.ParkingLot()
        self._draining = False
        self._ended = False

    async def read_line(self) -> str:
        assert self.process.stdout is not None
        while b"\n" not in self.out:
            chunk = await self.process.stdout.receive_some()
            assert chunk, f"server exited early: {await self.stderr()}"
            self.out += chunk
        line, self.out = self.out.split(b"\n", 1)
        return line.decode()

    async def drain(self) -> None:
        """Read stderr until it ends, waking whoever waits for a line of it."""
        assert self.process.stderr is not None
        self._draining = True
        while chunk := await self.process.stderr.receive_some():
            self.err += chunk
            self._news.unpark_all()
        self._ended = True
        self._news.unpark_all()

    async def wait_for_log(self, text: str) -> None:
        """Until ``text`` appears on stderr (the process keeps running)."""
        while text.encode() not in self.err:
            assert not self._ended, f"server exited early: {self.err.decode()}"
            await self._news.park()

    async def stderr(self) -> str:
        """All of stderr, once it has ended (read here if nothing drains it)."""
        if not self._draining:
            await self.drain()
        while not self._ended:
            await self._news.park()
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
    async with trio.open_nursery() as nursery:
        nursery.start_soon(proc.drain)
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
async def test_serve_prints_listeners_and_stops_cleanly_on_signal(signum: int) -> None:
    with trio.fail_after(20):
        async with serving("--port", "0", "--tcp-port", "0") as (proc, urls):
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


async def test_serve_without_db_keeps_history_in_the_data_home(data_home: DataHome) -> None:
    """The default history file follows XDG_DATA_HOME: here, the run's temporary one."""
    expected = Path(os.environ["XDG_DATA_HOME"]) / "triochat" / "history.sqlite3"
    assert expected.is_relative_to(data_home.root)
    expected.unlink(missing_ok=True)
    with trio.fail_after(20):
        async with serving("--port", "0", "--tcp-port", "0") as (proc, urls):
            async with open_client(urls[1], "ada"):
                pass
            proc.process.send_signal(signal.SIGTERM)
            assert await proc.process.wait() == 0
    assert expected.stat().st_size > 0


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--history", "-1", "-1 must be 0 or more"),
        ("--retention", "0", "0 must be 1 or more"),
        ("--retention", "-5", "-5 must be 1 or more"),
        ("--max-line", "100", f"100 must be {MIN_MAX_LINE} or more"),
        ("--db", "", "an empty path is not a file"),
        ("--db", "/no/such/h.sqlite3", "/no/such/h.sqlite3: no such directory /no/such"),
        ("--handshake-timeout", "0", "0 must be more than 0"),
        ("--handshake-timeout", "inf", "'inf' is not a finite number"),
        ("--keepalive-timeout", "-1", "-1 must be more than 0"),
        ("--drain-timeout", "0", "0 must be more than 0"),
        ("--port", "70000", "70000 is not a port (0-65535)"),
    ],
)
def test_a_flag_value_that_cannot_work_is_one_line_naming_it(
    flag: str, value: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["serve", flag, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err == f"triochat serve: argument {flag}: {says} (see triochat serve --help)\n"


@pytest.mark.parametrize("url", ["ws://[::1", "ws://[zz]:5000"])
def test_a_malformed_tui_url_is_one_line(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["tui", "--url", url]) == 2
    err = capsys.readouterr().err
    assert err == f"triochat tui: {url!r}: use ws://, wss://, tcp:// or tls://HOST:PORT\n"


def test_max_line_floor_fits_the_longest_hello() -> None:
    room = "r" * rules.MAX_ROOM
    hello = Hello(nick="n" * rules.MAX_NICK, rooms=[room], resume={room: 2**53})
    assert len(encode(hello)) <= MIN_MAX_LINE


STALL_IMPORT = """
import sys, time

class Stall:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            sys.stdout.write("importing\\n")
            sys.stdout.flush()
            time.sleep(30)
        return None

sys.meta_path.insert(0, Stall())
"""


@pytest.mark.parametrize(
    ("command", "module"),
    [("triochat serve", "trio"), ("triochat tui", "textual"), ("harness", "rich")],
)
async def test_ctrl_c_while_modules_import_is_one_line_and_status_130(
    command: str, module: str, tmp_path: Path
) -> None:
    """A Ctrl-C that lands inside an import (held there by a stalling import hook)."""
    (tmp_path / "sitecustomize.py").write_text(STALL_IMPORT.format(module=module))
    program, *args = command.split()
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    script = str(Path(sys.executable).parent / program)
    with trio.fail_after(20):
        process = await trio.lowlevel.open_process(
            [script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        proc = Proc(process)
        try:
            assert await proc.read_line() == "importing"
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 130
        finally:
            process.kill()
            await process.wait()
        assert await proc.stderr() == f"{program}: interrupted\n"


@pytest.mark.parametrize(
    ("seqs", "bad", "says", "served"),
    [
        ([1, 2, 5, 6], None, "room 'lobby' has no event 3 after 2", [5, 6]),
        ([1, 2, 3], 2, "room 'lobby' event 2 is not a JSON event", [3]),
    ],
    ids=["seq-gap", "not-json"],
)
async def test_damaged_history_is_served_after_the_damage_with_one_line_naming_the_repair(
    seqs: list[int], bad: int | None, says: str, served: list[int], tmp_path: Path
) -> None:
    db = tmp_path / "history.sqlite3"
    store = HistoryStore(db, retention=100)
    store.write(
        Row(
            "lobby",
            seq,
            1.0,
            b"not json"
            if seq == bad
            else encode(Joined(room="lobby", nick="ada", seq=seq, ts=1.0)),
        )
        for seq in seqs
    )
    store.close()
    args = ["--port", "0", "--tcp-port", "0", "--db", str(db)]

    async def join_lobby(url: str) -> tuple[list[int], int]:
        async with open_client(url, "bob") as bob:
            joined = await skip_until(bob, Joined, nick="bob")
            page = await skip_until(bob, HistoryPage)
            return [event.seq for event in page.events], joined.seq

    with trio.fail_after(20):
        async with serving(*args) as (proc, urls):
            assert await join_lobby(urls[1]) == (served, seqs[-1] + 1)
            proc.process.send_signal(signal.SIGTERM)
            assert await proc.process.wait() == 0
            err = await proc.stderr()
        warnings = [line for line in err.splitlines() if "history database" in line]
        assert len(warnings) == 1, err
        assert f"{says}; serving its events after 2;" in warnings[0]
        repair = warnings[0].split(f"sqlite3 {db} ")[1].strip().strip('"')
        with sqlite3.connect(db) as con:
            con.execute(repair)  # the advice, taken as given
        async with serving(*args) as (proc, urls):
            history, _ = await join_lobby(urls[1])
            assert history[: len(served)] == served, "the repair keeps what was served"
            proc.process.send_signal(signal.SIGTERM)
            assert await proc.process.wait() == 0
            assert "history database" not in await proc.stderr()
