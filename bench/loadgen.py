"""The load generator: simulated chat clients on raw sockets, one epoll loop per worker process.

Theory of operation
-------------------
Each worker process (:func:`worker_main`) owns a share of the clients and runs
one plain ``select.epoll`` loop over them: no asyncio, no tasks, no decoding,
so a worker spends a few microseconds per *read*, not per event. The
orchestrator drives workers through a pipe with commands (:class:`Fleet`):
``connect`` a population, ``sync``, ``run`` one shape, ``handshakes``,
``close``.

Counting without decoding. Every delivery of a broadcast is one line holding
``"type":"message"``; a worker counts that pattern in the raw bytes it reads
(see :mod:`bench.wire` for why WebSocket framing never splits it). Whatever
follows the last newline of a read is carried into the next read, so no
pattern is ever split across reads and each is counted once.

Closed loop. A shape has K *senders*, each with exactly one broadcast
outstanding: a sender sends its next ``say`` the moment its own ``message``
comes back to it. "K broadcasts in flight" means that.

Latency. Each broadcast's text carries its send time (``CLOCK_MONOTONIC``,
one clock for every process of the machine). A sender records the time until
its own echo; a few *sampled* receivers (not senders, spread over the join
order) record the send-to-receipt time of every broadcast they read. Both go
into one HdrHistogram, in microseconds, for receipts inside the window.

Windows. A run has absolute ``start`` / ``measure`` / ``end`` times on the
shared clock; every worker (and the orchestrator, which samples the server's
CPU) cuts its counters at the same instants. Deliveries are counted when
read, during ``[measure, end)``.

TLS. An endpoint with a ``cafile`` is spoken to over TLS (non-blocking
``ssl`` sockets, verified against that CA). One TLS read returns at most one
record, so a read takes every record already decrypted or arrived, as one
plain read takes everything the socket holds; the hot loop is otherwise
unchanged.

Sync. Before a run, one client says ``SYNC<n>`` and every worker reads until
each of its clients has it. A room's events reach every member in one order,
so after a sync nothing older (a join storm, the tail of the last shape) is
still on its way.
"""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import resource
import select
import signal
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from typing import Any

from hdrh.histogram import HdrHistogram

from bench import wire

RECV_BYTES = 64 * 1024  # 256 KiB would cost an mmap + munmap per read (glibc threshold)
SYNC_TIMEOUT = 60.0
LATENCY_MAX_US = 60_000_000

CONNECTING, SECURING, UPGRADING, HELLO, READY = range(5)


class LoadgenError(Exception):
    """A worker could not do what it was asked; the message says which client and why."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    websocket: bool
    cafile: str | None = None
    """The CA that signed the server's certificate: the endpoint speaks TLS."""


@dataclass(frozen=True)
class Population:
    """The clients one worker opens: global indices ``first .. first+count-1``."""

    endpoint: Endpoint
    first: int
    count: int
    room: str
    room_size: int = 0
    """0: everyone in ``room``; else rooms ``{room}-{index // room_size}``."""
    parallel: int = 200
    """Connections being set up at once."""
    timeout: float = 120.0


@dataclass(frozen=True)
class RunSpec:
    room: str
    senders: dict[int, int]
    """Local client index → sender id (unique across workers)."""
    sampled: tuple[int, ...]
    """Local client indices whose every receipt is timed."""
    start: float
    measure: float
    end: float
    drain: float = 5.0
    time_echo: bool = True
    """Whether senders time their own echo; off, only the sampled receivers are timed
    (the Redis section's cross-node latency: senders on one node, receivers on another)."""


@dataclass(frozen=True)
class RunResult:
    deliveries: int
    broadcasts: int
    cpu_s: float
    histogram: bytes
    lost: int
    """Clients whose connection the server closed during the run."""
    stalled: int
    """Senders whose last broadcast never came back within the drain time."""
    reads: int
    """Reads that returned data, in the window: deliveries per read shows the server's batching."""
    polls: int
    """epoll waits in the window."""


@dataclass(frozen=True)
class HandshakeSpec:
    endpoint: Endpoint
    parallel: int
    start: float
    measure: float
    end: float


@dataclass(frozen=True)
class HandshakeResult:
    completed: int
    failed: int
    cpu_s: float


class Client:
    __slots__ = ("accept", "buf", "fd", "marker", "mask", "nick", "room", "sampled", "sent_ns",
                 "sid", "sock", "state", "synced")  # fmt: skip

    def __init__(self, sock: socket.socket, nick: str, room: str) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.nick = nick
        self.room = room
        self.state = CONNECTING
        self.buf = b""
        self.accept = b""
        self.mask = os.urandom(4)
        self.synced = False
        self.marker: bytes | None = None
        self.sid = 0
        self.sent_ns = 0
        self.sampled = False


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _new_histogram() -> HdrHistogram:
    return HdrHistogram(1, LATENCY_MAX_US, 3)


def _tls_recv(sock: socket.socket) -> bytes:
    """Every record of a TLS socket readable now, up to ``RECV_BYTES``; ``BlockingIOError``
    if none (a wake-up for a session ticket, say); ``b""`` at the end of the stream."""
    chunks: list[bytes] = []
    size = 0
    while size < RECV_BYTES:
        try:
            data = sock.recv(RECV_BYTES)
        except ssl.SSLWantReadError:
            break
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            data = b""
        if not data:
            if not chunks:
                return b""
            break  # the end is read again, alone, on the next wake-up
        chunks.append(data)
        size += len(data)
    if not chunks:
        raise BlockingIOError
    return b"".join(chunks)


def _abort(sock: socket.socket) -> None:
    """Close with RST: no TIME_WAIT, and the server learns at once."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


class Worker:
    """One process's clients and its epoll loop."""

    def __init__(self) -> None:
        self.ep = select.epoll()
        self.clients: list[Client] = []
        self.by_fd: dict[int, Client] = {}
        self.endpoint: Endpoint | None = None
        self.tls: ssl.SSLContext | None = None

    def _use(self, endpoint: Endpoint) -> None:
        """Talk to ``endpoint`` from now on (with TLS if it has a CA)."""
        self.endpoint = endpoint
        self.tls = None
        if endpoint.cafile is not None:
            self.tls = ssl.create_default_context(cafile=endpoint.cafile)

    # --- plumbing ---------------------------------------------------------------------

    def _open(self, endpoint: Endpoint, nick: str, room: str) -> Client:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex((endpoint.host, endpoint.port))
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            raise LoadgenError(f"{nick}: connect failed: {os.strerror(err)}")
        client = Client(sock, nick, room)
        self.by_fd[client.fd] = client
        self.ep.register(client.fd, select.EPOLLOUT)
        return client

    def _send(self, client: Client, line: bytes) -> None:
        data = wire.text_frame(line, client.mask) if self._websocket else line
        if client.sock.send(data) != len(data):
            raise LoadgenError(f"{client.nick}: socket buffer full on a single event")

    @property
    def _websocket(self) -> bool:
        return self.endpoint is not None and self.endpoint.websocket

    def _forget(self, client: Client) -> None:
        self.by_fd.pop(client.fd, None)
        with contextlib.suppress(OSError, ValueError):
            self.ep.unregister(client.fd)

    # --- setup: connect, upgrade, hello, welcome --------------------------------------

    def connect(self, pop: Population) -> dict[str, float]:
        self._use(pop.endpoint)
        began = time.monotonic()
        deadline = began + pop.timeout
        todo = deque(range(pop.first, pop.first + pop.count))
        opening: dict[int, Client] = {}
        while todo or opening:
            while todo and len(opening) < pop.parallel:
                index = todo.popleft()
                room = f"{pop.room}-{index // pop.room_size}" if pop.room_size else pop.room
                client = self._open(pop.endpoint, f"c{index}", room)
                opening[client.fd] = client
                self.clients.append(client)
            if time.monotonic() > deadline:
                raise LoadgenError(
                    f"{len(opening) + len(todo)} of {pop.count} clients not ready "
                    f"after {pop.timeout:.0f} s"
                )
            for fd, _ in self.ep.poll(0.5):
                client = self.by_fd[fd]
                if client.state == READY:
                    self._read_idle(client)
                    continue
                self._advance(client)
                if client.state == READY:
                    del opening[fd]
        return {"connected": pop.count, "seconds": time.monotonic() - began}

    def _advance(self, client: Client) -> None:
        endpoint = self.endpoint
        assert endpoint is not None
        if client.state == CONNECTING:
            err = client.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise LoadgenError(f"{client.nick}: connect failed: {os.strerror(err)}")
            self.ep.modify(client.fd, select.EPOLLIN)
            if self.tls is None:
                self._greet(client)
                return
            client.sock = self.tls.wrap_socket(
                client.sock, server_hostname=endpoint.host, do_handshake_on_connect=False
            )
            client.state = SECURING
        if client.state == SECURING:
            self._secure(client)
            return
        data = self._recv(client)
        if not data:
            raise LoadgenError(f"{client.nick}: closed by the server during setup")
        if client.state == UPGRADING:
            data = self._upgrade(client, data)
        if client.state == HELLO:
            self._await_welcome(client, data)

    def _secure(self, client: Client) -> None:
        """One step of the TLS handshake; once it is done, the upgrade or hello."""
        assert isinstance(client.sock, ssl.SSLSocket)
        try:
            client.sock.do_handshake()
        except ssl.SSLWantReadError:
            self.ep.modify(client.fd, select.EPOLLIN)
            return
        except ssl.SSLWantWriteError:
            self.ep.modify(client.fd, select.EPOLLOUT)
            return
        except OSError as exc:
            raise LoadgenError(f"{client.nick}: TLS handshake failed: {exc}") from None
        self.ep.modify(client.fd, select.EPOLLIN)
        self._greet(client)

    def _greet(self, client: Client) -> None:
        """The connection is open (and secured): the upgrade request, or hello on TCP."""
        endpoint = self.endpoint
        assert endpoint is not None
        if endpoint.websocket:
            request, client.accept = wire.upgrade_request(endpoint.host, endpoint.port)
            client.sock.send(request)
            client.state = UPGRADING
        else:
            self._send(client, wire.hello(client.nick, client.room))
            client.state = HELLO

    def _upgrade(self, client: Client, data: bytes) -> bytes:
        client.buf = (client.buf + data).lstrip(b"\n")  # a spurious wake-up's empty line
        end = client.buf.find(b"\r\n\r\n")
        if end < 0:
            return b""
        head, rest = client.buf[:end], client.buf[end + 4 :]
        client.buf = b""
        if not wire.upgrade_accepted(head, client.accept):
            first = head.split(b"\r\n", 1)[0].decode(errors="replace")
            raise LoadgenError(f"{client.nick}: upgrade refused: {first}")
        client.state = HELLO
        self._send(client, wire.hello(client.nick, client.room))
        return rest

    def _await_welcome(self, client: Client, data: bytes) -> None:
        buf = client.buf + data
        if wire.ERROR in buf:
            line = buf[buf.find(wire.ERROR) :].split(b"\n", 1)[0].decode(errors="replace")
            raise LoadgenError(f"{client.nick}: refused: {line}")
        if wire.WELCOME in buf:
            client.state = READY
        client.buf = buf[buf.rfind(b"\n") + 1 :]

    def _recv(self, client: Client) -> bytes:
        try:
            if self.tls is not None:
                return _tls_recv(client.sock)
            return client.sock.recv(RECV_BYTES)
        except BlockingIOError:
            return b"\n"  # spurious wake-up: an empty line changes nothing
        except OSError:
            return b""

    def _read_idle(self, client: Client) -> None:
        data = self._recv(client)
        if not data:
            self._forget(client)
            return
        buf = client.buf + data
        client.buf = buf[buf.rfind(b"\n") + 1 :]

    # --- sync -------------------------------------------------------------------------

    def sync(self, args: tuple[int, bool, str]) -> dict[str, float]:
        token, speak, room = args
        began = time.monotonic()
        marker = b'"text":"SYNC%d"' % token
        waiting = {c.fd for c in self.clients if c.fd in self.by_fd}
        if speak:
            self._send(self.clients[0], wire.say_text(room.encode(), b"SYNC%d" % token))
        while waiting:
            if time.monotonic() - began > SYNC_TIMEOUT:
                raise LoadgenError(f"{len(waiting)} clients never got the sync broadcast")
            for fd, _ in self.ep.poll(0.5):
                client = self.by_fd[fd]
                data = self._recv(client)
                if not data:
                    raise LoadgenError(f"{client.nick}: closed by the server")
                buf = client.buf + data
                cut = buf.rfind(b"\n") + 1
                client.buf = buf[cut:]
                if fd in waiting and buf.find(marker, 0, cut) >= 0:
                    waiting.discard(fd)
        return {"seconds": time.monotonic() - began}

    # --- one shape ----------------------------------------------------------------------

    def run(self, spec: RunSpec) -> RunResult:
        """The hot loop: count, time, and keep every sender's one broadcast in flight."""
        room = spec.room.encode()
        hist = _new_histogram()
        senders = [self.clients[i] for i in spec.senders]
        for index, sid in spec.senders.items():
            client = self.clients[index]
            client.marker, client.sid, client.sent_ns = wire.echo_marker(sid), sid, 0
        for index in spec.sampled:
            self.clients[index].sampled = True
        message, sent_at, by_fd = wire.MESSAGE, wire.SENT_AT, self.by_fd
        tls, time_echo = self.tls is not None, spec.time_echo
        monotonic, monotonic_ns = time.monotonic, time.monotonic_ns
        delivered = broadcasts = lost = reads = polls = 0
        d0 = b0 = d1 = b1 = r0 = r1 = p0 = p1 = 0
        cpu0 = cpu1 = 0.0
        phase = 0  # 0 before start, 1 warm-up, 2 measuring, 3 draining
        boundaries = (spec.start, spec.measure, spec.end, spec.end + spec.drain)
        ref = 0

        def speak(client: Client) -> None:
            nonlocal ref
            ref += 1
            client.sent_ns = monotonic_ns()
            self._send(client, wire.say(room, client.sid, client.sent_ns, ref))

        now = monotonic()
        while True:
            if phase == 0 and now >= spec.start:
                phase = 1
                for client in senders:
                    speak(client)
            if phase == 1 and now >= spec.measure:
                phase, d0, b0, r0, p0, cpu0 = 2, delivered, broadcasts, reads, polls, _cpu_s()
            if phase == 2 and now >= spec.end:
                phase, d1, b1, r1, p1, cpu1 = 3, delivered, broadcasts, reads, polls, _cpu_s()
            if phase == 3 and (now >= boundaries[3] or not any(c.sent_ns for c in senders)):
                break
            polls += 1
            for fd, _ in self.ep.poll(max(0.0, boundaries[phase] - now)):
                reader = by_fd.get(fd)
                if reader is None:
                    continue
                client = reader
                try:
                    data = _tls_recv(client.sock) if tls else client.sock.recv(RECV_BYTES)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    lost += 1
                    client.sent_ns = 0
                    self._forget(client)
                    continue
                reads += 1
                if client.buf:
                    data = client.buf + data
                cut = data.rfind(b"\n") + 1
                client.buf = data[cut:]
                if not cut:
                    continue
                delivered += data.count(message, 0, cut)
                if client.sent_ns and data.find(client.marker or b"\0", 0, cut) >= 0:
                    if phase == 2 and time_echo:
                        hist.record_value(max(1, (monotonic_ns() - client.sent_ns) // 1000))
                    client.sent_ns = 0
                    if phase < 3:
                        speak(client)
                        broadcasts += 1
                elif client.sampled and phase == 2:
                    now_ns = monotonic_ns()
                    for match in sent_at.finditer(data, 0, cut):
                        hist.record_value(max(1, (now_ns - int(match.group(1))) // 1000))
            now = monotonic()
        stalled = sum(1 for c in senders if c.sent_ns)
        for client in self.clients:
            client.marker, client.sent_ns, client.sampled = None, 0, False
        return RunResult(
            deliveries=d1 - d0,
            broadcasts=b1 - b0,
            cpu_s=cpu1 - cpu0,
            histogram=hist.encode(),
            lost=lost,
            stalled=stalled,
            reads=r1 - r0,
            polls=p1 - p0,
        )

    # --- handshakes -----------------------------------------------------------------

    def handshakes(self, spec: HandshakeSpec) -> HandshakeResult:
        """Connect, upgrade, close (FIN), with ``parallel`` handshakes always under way.

        With TLS, the TLS handshake comes first: a handshake is both.
        """
        self._use(spec.endpoint)
        opening: dict[int, Client] = {}
        completed = failed = 0
        cpu0 = cpu1 = 0.0
        measuring = False
        while True:
            now = time.monotonic()
            if not measuring and now >= spec.measure:
                measuring, cpu0 = True, _cpu_s()
            if now >= spec.end:
                cpu1 = _cpu_s()
                break
            while len(opening) < spec.parallel and now >= spec.start:
                client = self._open(spec.endpoint, "h", "h")
                opening[client.fd] = client
            for fd, _ in self.ep.poll(min(0.05, max(0.0, spec.end - now))):
                client = opening[fd]
                try:
                    self._handshake_step(client)
                except LoadgenError:
                    failed += 1
                    client.state = -1
                if client.state in (HELLO, -1):
                    completed += client.state == HELLO and measuring
                    self._forget(client)
                    client.sock.close()
                    del opening[fd]
        for client in opening.values():
            self._forget(client)
            _abort(client.sock)
        return HandshakeResult(completed=completed, failed=failed, cpu_s=cpu1 - cpu0)

    def _handshake_step(self, client: Client) -> None:
        if client.state in (CONNECTING, SECURING):
            self._advance(client)
            return
        try:
            data = _tls_recv(client.sock) if self.tls else client.sock.recv(RECV_BYTES)
        except BlockingIOError:
            return  # nothing yet (with TLS: a session ticket alone)
        except OSError:
            data = b""
        if not data:
            raise LoadgenError("closed during the upgrade")
        client.buf += data
        end = client.buf.find(b"\r\n\r\n")
        if end >= 0:
            if not wire.upgrade_accepted(client.buf[:end], client.accept):
                raise LoadgenError("upgrade refused")
            client.state = HELLO

    # --- teardown -------------------------------------------------------------------

    def close(self, _: object = None) -> dict[str, int]:
        closed = len(self.clients)
        for client in self.clients:
            self._forget(client)
            _abort(client.sock)
        self.clients, self.by_fd = [], {}
        return {"closed": closed}


def worker_main(pipe: Pipe, cpus: set[int] | None) -> None:
    """A worker process: obey commands from the pipe until ``exit`` or the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the orchestrator decides when we stop
    if cpus:
        os.sched_setaffinity(0, cpus)
    worker = Worker()
    commands: dict[str, Callable[[Any], Any]] = {
        "connect": worker.connect,
        "sync": worker.sync,
        "run": worker.run,
        "handshakes": worker.handshakes,
        "close": worker.close,
    }
    while True:
        try:
            command, arg = pipe.recv()
        except (EOFError, KeyboardInterrupt):
            break
        if command == "exit":
            worker.close()
            break
        try:
            pipe.send(("ok", commands[command](arg)))
        except LoadgenError as exc:
            worker.close()
            pipe.send(("error", str(exc)))
        except Exception as exc:
            worker.close()
            pipe.send(("error", f"{type(exc).__name__}: {exc}"))


class Fleet:
    """The orchestrator's handle on the worker processes."""

    def __init__(self, workers: int, cpus: set[int] | None) -> None:
        context = multiprocessing.get_context("fork")
        self._pipes: list[Pipe] = []
        self._procs: list[multiprocessing.process.BaseProcess] = []
        for _ in range(workers):
            ours, theirs = context.Pipe()
            proc = context.Process(target=worker_main, args=(theirs, cpus), daemon=True)
            proc.start()
            theirs.close()
            self._pipes.append(ours)
            self._procs.append(proc)

    def __len__(self) -> int:
        return len(self._pipes)

    def call(self, command: str, args: Sequence[object]) -> list[Any]:
        """Send ``command`` with ``args[i]`` to worker ``i``; every worker's answer, in order."""
        self.submit(command, args)
        return self.collect()

    def submit(self, command: str, args: Sequence[object]) -> None:
        """Start ``command`` on every worker without waiting (see :meth:`collect`)."""
        for pipe, arg in zip(self._pipes, args, strict=True):
            pipe.send((command, arg))

    def collect(self) -> list[Any]:
        """Every worker's answer to the last :meth:`submit`; one failure fails them all."""
        answers = [pipe.recv() for pipe in self._pipes]
        errors = [str(value) for status, value in answers if status != "ok"]
        if errors:
            raise LoadgenError("; ".join(dict.fromkeys(errors)))
        return [value for _, value in answers]

    def broadcast(self, command: str, arg: object = None) -> list[Any]:
        return self.call(command, [arg] * len(self))

    def close(self) -> None:
        for pipe in self._pipes:
            with contextlib.suppress(OSError):
                pipe.send(("exit", None))
        for proc in self._procs:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
