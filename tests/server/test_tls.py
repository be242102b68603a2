"""TLS on both listeners, over real sockets, with trustme certificates.

Every wait here is on an event, a line or an EOF, bounded by ``fail_after``:
a test that would hang fails instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import shutil
import socket
import ssl
import subprocess
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import trio
import trustme
import wsproto
from websockets.asyncio.client import connect as websockets_connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin
from wsproto.events import AcceptConnection
from wsproto.events import Request as WsRequest
from wsproto.events import TextMessage as WsText

from tests.server.helpers import host_port, settle_join, skip_until
from tests.server.test_accounts import PASSWORD, add_account
from tests.server.test_cli import SERVE, serving
from triochat.client import Client, open_client
from triochat.errors import CertificateError, ConnectError, TriochatError
from triochat.protocol import decode_server, encode
from triochat.protocol.events import (
    Ack,
    Error,
    Hello,
    Left,
    LeftReason,
    Members,
    Message,
    Notice,
    Ping,
    Welcome,
)
from triochat.server import Server, ServerConfig, serve
from triochat.server.app import tls_context

WAIT = 10
"""Seconds any one test may take; every wait below is bounded by it."""
CLIENT_GRACE = inspect.signature(Client.aclose).parameters["grace"].default
"""Seconds a client's close may take before it drops the connection."""


@dataclass(frozen=True)
class Certs:
    cafile: str
    certfile: str
    keyfile: str
    ca: trustme.CA


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A private CA and a server certificate for 127.0.0.1 and localhost, as PEM files."""
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = Certs(str(folder / "ca.pem"), str(folder / "cert.pem"), str(folder / "key.pem"), ca)
    ca.cert_pem.write_to_path(paths.cafile)
    cert.private_key_pem.write_to_path(paths.keyfile)
    for n, blob in enumerate(cert.cert_chain_pems):
        blob.write_to_path(paths.certfile, append=n > 0)
    return paths


def tls_config(certs: Certs, **changes: object) -> ServerConfig:
    base = ServerConfig(
        port=0, tcp_port=0, rate_limit=0, certfile=certs.certfile, keyfile=certs.keyfile
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
async def server(nursery: trio.Nursery, certs: Certs) -> AsyncIterator[Server]:
    running: Server = await nursery.start(serve, tls_config(certs))
    yield running
    running.stop()


def _client_context(certs: Certs) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=certs.cafile)


async def _tls_stream(url: str, certs: Certs) -> trio.SSLStream[trio.SocketStream]:
    """A raw TLS stream to ``url``'s listener, handshake done (the test drives the bytes)."""
    host, port = host_port(url)
    stream = await trio.open_tcp_stream(host, port)
    secured = trio.SSLStream(stream, _client_context(certs), server_hostname=host)
    await secured.do_handshake()
    return secured


async def _lines_until(stream: trio.abc.ReceiveStream, kind: type) -> list[object]:
    """Events read from a line stream up to the first ``kind``."""
    events: list[object] = []
    buffer = b""
    while True:
        data = await stream.receive_some()
        assert data, f"closed before a {kind.__name__}: {events}"
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            events.append(decode_server(line))
            if isinstance(events[-1], kind):
                return events


async def _eof(stream: trio.abc.ReceiveStream) -> None:
    """Read until the server ends the stream (EOF, a reset, or a TLS stream cut)."""
    try:
        while await stream.receive_some():
            pass
    except trio.BrokenResourceError:
        pass


# --- chat over TLS ------------------------------------------------------------------


async def test_listening_urls_name_the_tls_schemes(server: Server) -> None:
    assert [url.split("://")[0] for url in server.urls] == ["wss", "tls"]
    assert server.url("wss").startswith("wss://127.0.0.1:")
    assert server.url("tls").startswith("tls://127.0.0.1:")


async def test_chat_over_wss_and_tls(server: Server, certs: Certs) -> None:
    with trio.fail_after(WAIT):
        async with (
            open_client(server.url("wss"), "ada", cafile=certs.cafile) as ada,
            open_client(server.url("tls"), "bob", cafile=certs.cafile) as bob,
        ):
            await settle_join(ada)
            await settle_join(bob)
            await ada.say("lobby", "over wss", id=1)
            await skip_until(bob, Message, from_="ada", text="over wss")
            await bob.say("lobby", "over tls", id=2)
            await skip_until(ada, Message, from_="bob", text="over tls")
            await skip_until(bob, Ack, id=2)


async def test_tls_connections_are_secure_and_plain_ones_are_not(
    server: Server, certs: Certs, nursery: trio.Nursery
) -> None:
    plain: Server = await nursery.start(
        serve, replace(tls_config(certs), certfile=None, keyfile=None)
    )
    with trio.fail_after(WAIT):
        async with (
            open_client(server.url("wss"), "ada", cafile=certs.cafile),
            open_client(server.url("tls"), "bob", cafile=certs.cafile),
            open_client(plain.url("ws"), "cy"),
            open_client(plain.url("tcp"), "di"),
        ):
            secure = sorted(s._conn.secure for s in server._sessions)
            insecure = sorted(s._conn.secure for s in plain._sessions)
    plain.stop()
    assert (secure, insecure) == ([True, True], [False, False])


async def test_websockets_library_as_a_wss_client(server: Server, certs: Certs) -> None:
    """Another stack: ``websockets``, trusting the private CA, as in docs/security.md."""

    async def hello() -> dict[str, object]:
        context = ssl.create_default_context(cafile=certs.cafile)
        async with websockets_connect(server.url("wss"), ssl=context) as ws:
            await ws.send(json.dumps({"type": "hello", "nick": "ada"}))
            reply = await ws.recv()
            assert isinstance(reply, str)
            first: dict[str, object] = json.loads(reply.split("\n")[0])
            return first

    with trio.fail_after(WAIT):
        welcome = await trio.to_thread.run_sync(asyncio.run, hello())
    assert (welcome["type"], welcome["nick"]) == ("welcome", "ada")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_openssl_s_client_on_the_tls_port(server: Server, certs: Certs) -> None:
    host, port = host_port(server.url("tls"))
    command = ["openssl", "s_client", "-connect", f"{host}:{port}", "-quiet"]
    command += ["-CAfile", certs.cafile, "-verify_return_error"]
    with trio.fail_after(WAIT):
        process = await trio.lowlevel.open_process(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        try:
            assert process.stdin is not None
            assert process.stdout is not None
            await process.stdin.send_all(encode(Hello(nick="ada")))
            events = await _lines_until(process.stdout, Welcome)
        finally:
            process.kill()
            await process.wait()
    assert isinstance(events[0], Welcome)
    assert events[0].nick == "ada"


# --- refusals -----------------------------------------------------------------------


async def test_an_untrusted_certificate_is_refused_by_the_client(
    server: Server, tmp_path: Path
) -> None:
    stranger = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    for url in (server.url("wss"), server.url("tls")):
        with trio.fail_after(WAIT), pytest.raises(ConnectError) as refused:
            async with open_client(url, "ada", cafile=str(stranger)):
                pass
        assert str(refused.value).startswith(f"{url}: the server's certificate is not trusted (")
        assert "\n" not in str(refused.value)


async def test_a_certificate_for_another_host_is_refused(
    nursery: trio.Nursery, certs: Certs, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere.pem"
    certs.ca.issue_cert("chat.example").private_key_and_cert_chain_pem.write_to_path(str(elsewhere))
    config = tls_config(certs, certfile=str(elsewhere), keyfile=str(elsewhere))
    server: Server = await nursery.start(serve, config)
    for url in server.urls:
        with trio.fail_after(WAIT), pytest.raises(ConnectError) as refused:
            async with open_client(url, "ada", cafile=certs.cafile):
                pass
        assert "certificate is not trusted (IP address mismatch" in str(refused.value)
    server.stop()


async def test_a_tls_url_on_a_plaintext_port_says_so_in_one_line(nursery: trio.Nursery) -> None:
    plain: Server = await nursery.start(serve, ServerConfig(port=0, tcp_port=0))
    for url, scheme in ((plain.url("ws"), "ws"), (plain.url("tcp"), "tcp")):
        secure_url = url.replace(f"{scheme}://", "wss://" if scheme == "ws" else "tls://")
        with trio.fail_after(WAIT), pytest.raises(ConnectError) as refused:
            async with open_client(secure_url, "ada"):
                pass
        assert str(refused.value) == f"{secure_url}: the server does not speak TLS there; use {url}"
    plain.stop()


async def test_a_plaintext_url_on_a_tls_port_says_so_in_one_line(server: Server) -> None:
    """A ``ws://`` or ``tcp://`` client learns at once to use the secure URL, instead
    of waiting for its connect timeout."""
    for kind, plain in (("wss", "ws"), ("tls", "tcp")):
        secure_url = server.url(kind)
        plain_url = secure_url.replace(f"{kind}://", f"{plain}://")
        with trio.fail_after(WAIT), pytest.raises(TriochatError) as refused:
            async with open_client(plain_url, "ada", connect_timeout=WAIT):
                pass
        assert str(refused.value).endswith(f"this port speaks TLS: connect with {secure_url}")


def _client_up_to(certs: Certs, newest: ssl.TLSVersion) -> ssl.SSLContext:
    """A client that offers TLS 1.0 up to ``newest`` (OpenSSL's own floor lowered)."""
    context = _client_context(certs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # old versions are the point here
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = newest
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


async def _handshake(url: str, context: ssl.SSLContext) -> None:
    host, port = host_port(url)
    stream = trio.SSLStream(await trio.open_tcp_stream(host, port), context, server_hostname=host)
    try:
        await stream.do_handshake()
    finally:
        await trio.aclose_forcefully(stream)


async def test_a_tls_1_1_client_is_refused(server: Server, certs: Certs) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = _client_up_to(certs, ssl.TLSVersion.TLSv1_1)
    for url in server.urls:
        with trio.fail_after(WAIT):
            await _handshake(url, _client_up_to(certs, ssl.TLSVersion.TLSv1_2))  # the control
            with pytest.raises(trio.BrokenResourceError):
                await _handshake(url, old)


def _client_hello(certs: Certs) -> bytes:
    """A real ClientHello, as the first flight of a handshake that then stalls."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = _client_context(certs).wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize("kind", ["wss", "tls"])
async def test_a_stalled_tls_handshake_is_cut(
    nursery: trio.Nursery, certs: Certs, kind: str
) -> None:
    server: Server = await nursery.start(serve, tls_config(certs, handshake_timeout=0.3))
    with trio.fail_after(WAIT):
        async with (
            open_client(server.url(kind), "ada", cafile=certs.cafile) as ada,
            await trio.open_tcp_stream(*host_port(server.url(kind))) as silent,
            await trio.open_tcp_stream(*host_port(server.url(kind))) as halfway,
        ):
            await halfway.send_all(_client_hello(certs))  # then never the rest
            await _eof(silent)
            await _eof(halfway)
            await ada.say("lobby", "still here", id="ok")
            await skip_until(ada, Ack, id="ok")


@pytest.mark.parametrize("kind", ["wss", "tls"])
async def test_a_plaintext_client_on_the_tls_port_disturbs_nobody(
    server: Server, certs: Certs, kind: str
) -> None:
    plain = {"wss": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "tls": encode(Hello(nick="eve"))}[kind]
    with trio.fail_after(WAIT):
        async with open_client(server.url(kind), "ada", cafile=certs.cafile) as ada:
            await settle_join(ada)
            async with await trio.open_tcp_stream(*host_port(server.url(kind))) as eve:
                await eve.send_all(plain)
                await _eof(eve)
            await ada.who("lobby")
            members = await skip_until(ada, Members, room="lobby")
            assert members.nicks == ["ada"]


# --- keepalive, close and eviction over TLS ----------------------------------------


async def test_keepalive_over_tls_drops_a_peer_that_stops_answering(
    nursery: trio.Nursery, certs: Certs
) -> None:
    config = tls_config(certs, keepalive_interval=0.2, keepalive_timeout=0.3)
    server: Server = await nursery.start(serve, config)
    with trio.fail_after(WAIT):
        async with open_client(server.url("wss"), "watcher", cafile=certs.cafile) as watcher:
            await settle_join(watcher)
            mute = await _tls_stream(server.url("tls"), certs)
            await mute.send_all(encode(Hello(nick="mute")))
            events = await _lines_until(mute, Error)  # the ping goes unanswered
            left = await skip_until(watcher, Left, nick="mute")
            await trio.aclose_forcefully(mute)
        # Meanwhile the watcher answered every ping of its own (over wss) and stayed.
        assert watcher.welcome is not None
    assert Ping(token="keepalive") in events
    assert isinstance(events[-1], Error)
    assert events[-1].code == "timeout"
    assert left.reason is LeftReason.TIMEOUT


async def test_shutdown_over_tls_closes_both_listeners_promptly(
    nursery: trio.Nursery, certs: Certs
) -> None:
    """Each side's close_notify stands for its FIN: the lingering closes end as soon as
    both sides have closed, not at the server's ``close_timeout`` nor the client's grace."""
    config = tls_config(certs, close_timeout=WAIT, drain_timeout=WAIT)
    stopped = trio.Event()

    async def run(task_status: trio.TaskStatus[Server]) -> None:
        await serve(config, task_status=task_status)
        stopped.set()

    server: Server = await nursery.start(run)
    with trio.fail_after(WAIT / 2):
        async with (
            open_client(server.url("wss"), "ada", cafile=certs.cafile) as ada,
            open_client(server.url("tls"), "bob", cafile=certs.cafile) as bob,
        ):
            await settle_join(ada)
            await settle_join(bob)
            server.stop()
            for client in (ada, bob):
                # Iteration ends when the server has closed; its notice comes last.
                notices = [event async for event in client if isinstance(event, Notice)]
                assert [n.code for n in notices] == ["shutting_down"]
            closing = trio.current_time()
        await stopped.wait()
    assert trio.current_time() - closing < CLIENT_GRACE / 2


async def _stalled_tls_member(
    url: str, certs: Certs, nick: str
) -> trio.SSLStream[trio.SocketStream]:
    """A TLS client on a tiny receive buffer: says hello, reads its welcome, then never reads."""
    host, port = host_port(url)
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect((host, port))
    stream = trio.SSLStream(trio.SocketStream(sock), _client_context(certs), server_hostname=host)
    await stream.send_all(encode(Hello(nick=nick)))
    await _lines_until(stream, Welcome)
    return stream


async def test_a_stalled_tls_reader_is_evicted_and_the_room_goes_on(
    nursery: trio.Nursery, certs: Certs
) -> None:
    server: Server = await nursery.start(serve, tls_config(certs, outbox_events=200))
    text = "x" * 4000
    numbers: list[int] = []
    with trio.fail_after(3 * WAIT):
        sloth = await _stalled_tls_member(server.url("tls"), certs, "sloth")
        async with (
            open_client(server.url("wss"), "ada", cafile=certs.cafile) as ada,
            open_client(server.url("tls"), "bob", cafile=certs.cafile) as bob,
        ):
            await settle_join(ada)
            await settle_join(bob)
            sent = 0
            left: Left | None = None
            while left is None:
                for _ in range(50):
                    await bob.say("lobby", f"{sent}:{text}")
                    sent += 1
                while True:  # ada reads everything so far, and maybe sloth's eviction
                    event = await ada.receive()
                    if isinstance(event, Left) and event.nick == "sloth":
                        left = event
                    elif isinstance(event, Message):
                        numbers.append(int(event.text.split(":", 1)[0]))
                        if numbers[-1] == sent - 1:
                            break
                await skip_until(bob, Message, text=f"{sent - 1}:{text}")  # bob reads too
        await trio.aclose_forcefully(sloth)
    assert left.reason is LeftReason.SLOW_CONSUMER
    assert numbers == list(range(sent))


# --- configuration -------------------------------------------------------------------


def test_a_certificate_without_its_key_is_refused(certs: Certs) -> None:
    with pytest.raises(CertificateError, match="both a certificate"):
        tls_context(replace(tls_config(certs), keyfile=None))


def test_a_key_that_does_not_match_is_refused(certs: Certs, tmp_path: Path) -> None:
    other = tmp_path / "other-key.pem"
    certs.ca.issue_cert("127.0.0.1").private_key_pem.write_to_path(str(other))
    with pytest.raises(CertificateError, match="the key does not match the certificate"):
        tls_context(replace(tls_config(certs), keyfile=str(other)))


# --- what rides on Connection.secure -------------------------------------------------------


@pytest.mark.parametrize("kind", ["wss", "tls"])
async def test_a_password_login_is_accepted_over_tls_when_plaintext_would_be_refused(
    nursery: trio.Nursery, certs: Certs, tmp_path: Path, kind: str
) -> None:
    """With loopback not trusted, only the connection's TLS lets a password cross it
    (tests/server/test_accounts.py has the same login refused over ws:// and tcp://)."""
    add_account(tmp_path / "data.sqlite3", "ada")
    config = tls_config(
        certs, accounts_path=str(tmp_path / "data.sqlite3"), loopback_is_secure=False
    )
    server: Server = await nursery.start(serve, config)
    with trio.fail_after(WAIT):
        async with open_client(
            server.url(kind), "ada", password=PASSWORD, cafile=certs.cafile
        ) as ada:
            assert ada.welcome is not None
            assert ada.welcome.nick == "ada"
    server.stop()


# --- the command line ------------------------------------------------------------------


async def test_serve_with_a_certificate_prints_the_tls_listeners(certs: Certs) -> None:
    flags = ["--port", "0", "--tcp-port", "0", "--no-history"]
    tls = ["--certfile", certs.certfile, "--keyfile", certs.keyfile]
    with trio.fail_after(30):
        async with serving(*flags, *tls) as (_, urls):
            assert [url.split("://")[0] for url in urls] == ["wss", "tls"]
            async with open_client(urls[1], "ada", cafile=certs.cafile) as ada:
                assert ada.welcome is not None


async def test_serve_refuses_a_certificate_it_cannot_use_in_one_line(
    certs: Certs, tmp_path: Path
) -> None:
    other = tmp_path / "other-key.pem"
    certs.ca.issue_cert("127.0.0.1").private_key_pem.write_to_path(str(other))
    cases = [
        (["--certfile", certs.certfile], "needs both a certificate"),
        (["--keyfile", certs.keyfile], "needs both a certificate"),
        (["--certfile", str(tmp_path / "missing"), "--keyfile", certs.keyfile], "no such file"),
        (["--certfile", certs.certfile, "--keyfile", str(other)], "does not match"),
        (["--certfile", certs.cafile, "--keyfile", certs.cafile], "not a PEM certificate chain"),
    ]
    for flags, says in cases:
        done = await trio.run_process(
            [*SERVE, "--port", "0", "--tcp-port", "0", "--no-history", *flags],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        lines = done.stderr.decode().splitlines()
        assert done.returncode == 2, flags
        assert len(lines) == 1, lines
        assert says in lines[0]
        assert done.stdout == b""  # nothing listened


# --- the send side: sealed bytes, partly written --------------------------------------


async def _slow_tls_reader(url: str, certs: Certs) -> trio.SSLStream[trio.SocketStream]:
    """A TLS stream on a socket with a tiny receive buffer, so the server's writes to it
    are taken in part and the rest waits (held ciphertext, then the writer task)."""
    host, port = host_port(url)
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect((host, port))
    stream = trio.SSLStream(trio.SocketStream(sock), _client_context(certs), server_hostname=host)
    await stream.do_handshake()
    return stream


async def _websocket_lines(stream: trio.abc.Stream, host: str) -> AsyncIterator[bytes]:
    """A minimal WebSocket client (wsproto) over ``stream``: the server's lines, as they come."""
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    await stream.send_all(ws.send(WsRequest(host=host, target="/")))
    message = ""
    while True:
        data = await stream.receive_some()
        assert data, "closed by the server"
        ws.receive_data(bytes(data))
        for event in ws.events():
            if isinstance(event, WsText):
                message += event.data  # a message may come in pieces
                if event.message_finished:
                    for line in message.splitlines():
                        yield line.encode()
                    message = ""
            elif isinstance(event, AcceptConnection):
                await stream.send_all(ws.send(WsText(data=encode(Hello(nick="slow")).decode())))


async def _tcp_lines(stream: trio.abc.Stream, host: str) -> AsyncIterator[bytes]:
    await stream.send_all(encode(Hello(nick="slow")))
    buffer = b""
    while True:
        data = await stream.receive_some()
        assert data, "closed by the server"
        *lines, buffer = (buffer + data).split(b"\n")
        for line in lines:
            yield line


@pytest.mark.parametrize("kind", ["wss", "tls"])
async def test_a_reader_behind_on_tls_gets_every_line_in_order(
    nursery: trio.Nursery, certs: Certs, kind: str
) -> None:
    """What the socket did not take is sent later, sealed once and in sequence: a client that
    falls megabytes behind and then reads decrypts every line, in order."""
    config = tls_config(certs, outbox_events=10_000, outbox_bytes=64 * 2**20)
    server: Server = await nursery.start(serve, config)
    text, count = "y" * 4000, 300
    with trio.fail_after(3 * WAIT):
        slow = await _slow_tls_reader(server.url(kind), certs)
        lines = (_websocket_lines if kind == "wss" else _tcp_lines)(slow, "127.0.0.1")
        async for line in lines:  # the slow reader is welcomed and in the lobby
            if b'"type":"members"' in line:
                break
        async with open_client(server.url("tls"), "bob", cafile=certs.cafile) as bob:
            await settle_join(bob)
            for n in range(count):  # far more than the slow reader's buffers take
                await bob.say("lobby", f"{n}:{text}")
            await skip_until(bob, Message, text=f"{count - 1}:{text}")
            numbers: list[int] = []
            async for line in lines:
                event = decode_server(line)
                if isinstance(event, Message):
                    numbers.append(int(event.text.split(":", 1)[0]))
                    if len(numbers) == count:
                        break
        await trio.aclose_forcefully(slow)
    assert numbers == list(range(count))


async def test_a_tls_line_client_gets_close_notify_on_shutdown_and_closes_promptly(
    nursery: trio.Nursery, certs: Certs
) -> None:
    """TLS's clean end both ways: the server's goodbye ends with ``close_notify`` (a clean EOF,
    not a truncated stream), and a client's own close ends without waiting out its grace."""
    server: Server = await nursery.start(serve, tls_config(certs))
    with trio.fail_after(WAIT):
        async with open_client(server.url("tls"), "ada", cafile=certs.cafile) as ada:
            await settle_join(ada)
            closing = trio.current_time()
        assert trio.current_time() - closing < CLIENT_GRACE / 2
        raw = await _tls_stream(server.url("tls"), certs)
        await raw.send_all(encode(Hello(nick="bob")))
        await _lines_until(raw, Members)
        server.stop()
        while await raw.receive_some():  # BrokenResourceError here: no close_notify
            pass
        await trio.aclose_forcefully(raw)


async def test_a_request_sent_with_the_last_handshake_flight_is_read(
    server: Server, certs: Certs
) -> None:
    """A client may send its first bytes in the same segment as its Finished (openssl
    s_client does): they are already in the server's TLS buffer, not on the socket."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = _client_context(certs).wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with trio.fail_after(WAIT):
        async with await trio.open_tcp_stream(*host_port(server.url("tls"))) as sock:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await sock.send_all(outgoing.read())
                    incoming.write(await sock.receive_some())
            tls.write(encode(Hello(nick="ada")))
            await sock.send_all(outgoing.read())  # Finished and hello, one write
            received = b""
            while b'"type":"welcome"' not in received:
                incoming.write(await sock.receive_some())
                with contextlib.suppress(ssl.SSLWantReadError):
                    received += tls.read(65536)


async def test_origin_checks_hold_over_wss(server: Server, certs: Certs) -> None:
    """A page's own https:// origin may open a wss:// WebSocket; a foreign one gets 403,
    inside TLS as without it."""
    own = server.url("wss").replace("wss://", "https://")

    async def status(origin: str) -> int:
        context = ssl.create_default_context(cafile=certs.cafile)
        try:
            async with websockets_connect(server.url("wss"), ssl=context, origin=Origin(origin)):
                return 101
        except InvalidStatus as exc:
            return exc.response.status_code

    with trio.fail_after(WAIT):
        own_status = await trio.to_thread.run_sync(asyncio.run, status(own))
        foreign = await trio.to_thread.run_sync(asyncio.run, status("https://evil.example"))
    assert (own_status, foreign) == (101, 403)
