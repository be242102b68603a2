"""Connection caps: the whole server's, each address's, and the rates.

Loopback is exempt from the per-address limits unless ``limit_loopback``; these
tests turn that on, or reach the server from 127.0.0.2 as a second address.
"""

from __future__ import annotations

import resource
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import trio
import wsproto
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request

from tests.server.conftest import TEST_CONFIG
from tests.server.helpers import host_port, skip_until, until
from tests.server.test_cli import SERVE, Proc
from triochat.client import open_client
from triochat.errors import ConnectError
from triochat.protocol import decode_server, encode
from triochat.protocol.events import Error, Hello, Joined, Welcome
from triochat.server import Server, serve

QUICK = 1.0
"""An innocent client's hello→welcome while a flood is refused."""


async def start(nursery: trio.Nursery, **settings: Any) -> Server:
    server: Server = await nursery.start(serve, replace(TEST_CONFIG, **settings))
    return server


async def read_to_eof(stream: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some():
        data += chunk
    return data


async def tcp_refusal(url: str, local: str | None = None) -> Error:
    """The one line a refused TCP client reads before the server closes."""
    stream = await trio.open_tcp_stream(*host_port(url), local_address=local)
    async with stream:
        (line,) = (await read_to_eof(stream)).splitlines()
    error = decode_server(line)
    assert isinstance(error, Error), line
    return error


async def ws_upgrade(
    url: str, held: list[trio.SocketStream], forwarded_for: str | None = None
) -> tuple[int, bytes]:
    """Ask for an upgrade; the HTTP status (101: accepted, and kept in ``held``) and any body."""
    host, port = host_port(url)
    headers = [(b"X-Forwarded-For", forwarded_for.encode())] if forwarded_for else []
    stream = await trio.open_tcp_stream(host, port)
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host=host, target="/", extra_headers=headers)))
    status, body = 0, b""
    while True:
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                held.append(stream)
                return 101, b""
            if isinstance(event, RejectConnection):
                status = event.status_code
            elif isinstance(event, RejectData):
                body += event.data
                if event.body_finished:
                    await stream.aclose()
                    return status, body
        data = await stream.receive_some()
        assert data, "closed without an HTTP response"
        ws.receive_data(data)


@pytest.fixture
async def held() -> AsyncIterator[list[trio.SocketStream]]:
    """Where :func:`ws_upgrade` keeps the upgraded streams open for the test."""
    streams: list[trio.SocketStream] = []
    yield streams
    for stream in streams:
        await stream.aclose()


def too_many(body: bytes, says: str) -> None:
    error = decode_server(body.strip())
    assert isinstance(error, Error)
    assert error.code == "too_many_connections"
    assert says in error.message


async def test_tcp_per_address_cap_refuses_the_next_until_one_leaves(nursery: trio.Nursery) -> None:
    server = await start(nursery, limit_loopback=True, max_connections_per_ip=3)
    url = server.url("tcp")
    with trio.fail_after(10):
        async with open_client(url, "a1"), open_client(url, "a2"), open_client(url, "a3") as a3:
            error = await tcp_refusal(url)
            assert error.code == "too_many_connections"
            assert "from your address (at most 3)" in error.message
            await a3.aclose()
            await until(lambda: server.limits.held == 2)
            async with open_client(url, "a4") as a4:
                assert isinstance(a4.welcome, Welcome)


async def test_ws_per_address_cap_is_429_until_one_leaves(
    nursery: trio.Nursery, held: list[trio.SocketStream]
) -> None:
    server = await start(nursery, limit_loopback=True, max_connections_per_ip=2)
    url = server.url("ws")
    with trio.fail_after(10):
        assert (await ws_upgrade(url, held))[0] == 101
        assert (await ws_upgrade(url, held))[0] == 101
        status, body = await ws_upgrade(url, held)
        assert status == 429
        too_many(body, "from your address (at most 2)")
        await held.pop().aclose()
        await until(lambda: server.limits.held == 1)
        async with open_client(url, "back") as back:
            assert isinstance(back.welcome, Welcome)


@pytest.mark.parametrize("scheme", ["ws", "tcp"])
async def test_the_global_cap_applies_to_loopback_too(
    nursery: trio.Nursery, held: list[trio.SocketStream], scheme: str
) -> None:
    server = await start(nursery, max_connections=2)
    url = server.url(scheme)
    with trio.fail_after(10):
        async with open_client(url, "a1"), open_client(url, "a2"):
            if scheme == "tcp":
                error = await tcp_refusal(url)
                assert error.code == "too_many_connections"
                assert "server is full (2 connections)" in error.message
            else:
                status, body = await ws_upgrade(url, held)
                assert status == 503
                too_many(body, "server is full (2 connections)")


async def test_connect_rate_refuses_an_address_that_reconnects_too_often(
    nursery: trio.Nursery,
) -> None:
    server = await start(nursery, limit_loopback=True, connect_burst=2, connect_rate=0.01)
    url = server.url("tcp")
    with trio.fail_after(10):
        for nick in ("a1", "a2"):
            async with open_client(url, nick):
                pass
        error = await tcp_refusal(url)
        assert "connects too often" in error.message


async def test_loopback_is_exempt_from_per_address_limits_by_default(
    nursery: trio.Nursery,
) -> None:
    server = await start(nursery, max_connections_per_ip=1, connect_burst=1, connect_rate=0.01)
    url = server.url("ws")
    with trio.fail_after(10):
        async with open_client(url, "a1"), open_client(url, "a2"), open_client(url, "a3"):
            assert server.limits.held == 3
            assert len(server.limits) == 0, "no per-address state for loopback"


async def test_forwarded_for_from_a_trusted_proxy_gives_each_client_its_quota(
    nursery: trio.Nursery, held: list[trio.SocketStream]
) -> None:
    server = await start(
        nursery,
        limit_loopback=True,
        max_connections_per_ip=1,
        trusted_proxies=("127.0.0.1",),
    )
    url = server.url("ws")
    with trio.fail_after(10):
        assert (await ws_upgrade(url, held, "203.0.113.1"))[0] == 101
        assert (await ws_upgrade(url, held, "198.51.100.9, 203.0.113.2"))[0] == 101
        status, body = await ws_upgrade(url, held, "203.0.113.1")
        assert status == 429
        too_many(body, "from your address (at most 1)")
        # The proxy's own address is counted only when it names no client.
        assert (await ws_upgrade(url, held))[0] == 101
        assert (await ws_upgrade(url, held))[0] == 429


async def test_forwarded_for_from_anyone_else_is_ignored(
    nursery: trio.Nursery, held: list[trio.SocketStream]
) -> None:
    server = await start(
        nursery,
        limit_loopback=True,
        max_connections_per_ip=1,
        trusted_proxies=("10.0.0.0/8",),
    )
    url = server.url("ws")
    with trio.fail_after(10):
        assert (await ws_upgrade(url, held, "203.0.113.1"))[0] == 101
        assert (await ws_upgrade(url, held, "203.0.113.2"))[0] == 429


async def test_joins_are_rate_limited_per_address_across_connections(
    nursery: trio.Nursery,
) -> None:
    server = await start(nursery, limit_loopback=True, join_burst=3, join_rate=0.01)
    url = server.url("tcp")
    with trio.fail_after(10):
        async with open_client(url, "a") as a, open_client(url, "b") as b:  # lobby: 2 joins
            await a.join("x")
            await skip_until(a, Joined, room="x", nick="a")
            await b.join("y")
            error = await skip_until(b, Error)
            assert error.code == "rate_limited"
            assert "too many joins from your address" in error.message


def _task_count() -> int:
    def count(task: trio.lowlevel.Task) -> int:
        return 1 + sum(count(t) for n in task.child_nurseries for t in n.child_tasks)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return count(root)


async def _welcome_from(url: str, local: str) -> float:
    """Seconds from connect to ``welcome`` for a TCP client bound to ``local``."""
    began = trio.current_time()
    stream = await trio.open_tcp_stream(*host_port(url), local_address=local)
    async with stream:
        await stream.send_all(encode(Hello(nick="innocent")))
        data = b""
        while b"\n" not in data:
            chunk = await stream.receive_some()
            assert chunk, data
            data += chunk
        assert isinstance(decode_server(data.split(b"\n")[0]), Welcome)
    return trio.current_time() - began


@pytest.mark.parametrize("scheme", ["ws", "tcp"])
async def test_a_refused_flood_leaves_others_served_and_nothing_behind(
    nursery: trio.Nursery, scheme: str
) -> None:
    server = await start(nursery, limit_loopback=True, max_connections_per_ip=5)
    url = server.url(scheme)
    tasks = _task_count()
    with trio.fail_after(15):
        flood = [await trio.open_tcp_stream(*host_port(url)) for _ in range(60)]
        assert await _welcome_from(server.url("tcp"), "127.0.0.2") < QUICK
        for stream in flood:
            await stream.aclose()
        await until(lambda: server.limits.held == 0 and server.limits.refusing == 0)
        await until(lambda: _task_count() == tasks)
        assert server.connections == 0
        assert len(server.limits) <= 2, "only the two addresses' buckets, until they refill"


def _soft_below_hard(soft: int, hard: int) -> None:
    """Runs in the child before exec."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _soft_files_limit(pid: int) -> int:
    for line in open(f"/proc/{pid}/limits").read().splitlines():  # noqa: SIM115
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-files line")


async def test_serve_raises_its_files_limit_and_refuses_politely_beyond_it() -> None:
    """Soft 40, hard 128: raised to 128, so 96 connections (128 less a reserve of 32)."""
    process = await trio.lowlevel.open_process(
        [*SERVE, "--port", "0", "--tcp-port", "0", "--no-history"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: _soft_below_hard(40, 128),
    )
    proc = Proc(process)
    try:
        with trio.fail_after(30):
            urls = [(await proc.read_line()).removeprefix("listening ") for _ in range(2)]
            assert _soft_files_limit(process.pid) == 128
            address = host_port(urls[1])
            held = [await trio.open_tcp_stream(*address) for _ in range(96)]
            for _ in range(4):
                error = await tcp_refusal(urls[1])
                assert "server is full (96 connections)" in error.message
            for stream in held:
                await stream.aclose()
            assert isinstance(await _welcome_once_freed(urls[0]), Welcome)
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
            stderr = await proc.stderr()
            assert "Traceback" not in stderr
            assert "cannot accept" not in stderr
            assert stderr.count("refusing connections") == 1, "one line per episode"
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def _welcome_once_freed(url: str) -> Welcome | None:
    """A client's welcome once the server has seen the held connections end. Their ends
    reach it a while after our closes (longer on a busy machine), and until they have, it
    is still full and says so: a bounded poll on that answer, under the caller's deadline."""
    while True:
        try:
            async with open_client(url, "innocent") as innocent:
                return innocent.welcome
        except ConnectError as exc:
            if "server is full" not in str(exc):
                raise
        await trio.sleep(0.05)


async def test_refusals_are_logged_once_per_episode(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start(nursery, max_connections=1)
    url = server.url("tcp")
    with trio.fail_after(10):
        async with open_client(url, "a1"):
            for _ in range(5):
                await tcp_refusal(url)
    lines = [r.getMessage() for r in caplog.records if "refusing" in r.getMessage()]
    assert lines == ["refusing connections: the server holds 1 connections (--max-connections)"]


def test_a_trusted_proxy_that_is_no_address_is_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from triochat import cli

    with pytest.raises(SystemExit):
        cli.main(["serve", "--trusted-proxy", "proxy.local"])
    err = capsys.readouterr().err
    assert err == (
        "triochat serve: argument --trusted-proxy: 'proxy.local' is not an IP address"
        " or network (see triochat serve --help)\n"
    )
