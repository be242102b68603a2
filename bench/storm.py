"""A join storm: N clients join one room as fast as they can (issue 13, finding 7).

Every join is announced to every member, so a storm of N joins owes N(N+1)/2
``joined`` deliveries. While it runs, an *innocent* client connects every
:data:`PROBE_EVERY` seconds, says hello to another room and times how long its
``welcome`` takes: the storm must not starve anyone else. The clock starts once
the connection is made, at the hello: a connect is the kernel's (a SYN dropped
from a full queue is retried after the 1 s initial RTO), the welcome the server's.

The end of the storm. A storm client knows the room's members from the
``members`` it gets on joining plus every ``joined`` after it (:class:`Roster`);
the storm is over once every storm client knows all N members: each has its
welcome, and every ``joined`` owed to it (the last joiner's included) has
reached it. Nothing waits on a clock: the loop reads until that is true, or
fails at :data:`TIMEOUT`.

Transports. The storm clients speak plain TCP or WebSocket (:data:`TRANSPORTS`);
a WebSocket client sends its upgrade request on connecting and its hello (a
masked text frame) once the upgrade is accepted, then reads the server's
frames with :class:`Frames`. The innocent client always speaks TCP: it times
the server, not a transport.

Storm clients read everything they are sent (readers are the expensive case)
in one epoll loop in the bench's own process, on the load generator's CPU; the
innocent client (:class:`Prober`) is a thread with a blocking socket, so its clock
waits for neither that loop nor, in tests/server/test_join_storm.py, the storm's
Trio tasks. The server's CPU is ``utime + stime`` from /proc between the first
connect and the end; its RSS is sampled every :data:`PROBE_EVERY` seconds.
"""

from __future__ import annotations

import json
import os
import re
import select
import socket
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

from bench import servers, wire
from bench.loadgen import RECV_BYTES

STORM_ROOM = "storm"
CALM_ROOM = "calm"
PROBE_EVERY = 0.1
"""Seconds between one innocent welcome and the next innocent connect."""
PROBE_TIMEOUT = 60.0
TIMEOUT = 120.0
"""The longest a storm may take before it counts as failed."""
OPEN_PER_ROUND = 64
"""Connections opened between two reads of the ones already open, so none waits to be read."""

HEAD = ["welcome", "joined", "history", "members"]
"""What a storm client gets before the room's later joins, in order."""
JOINED = re.compile(rb'"type":"joined","room":"%s","nick":"([^"]*)"' % STORM_ROOM.encode())
TYPE = b'"type":'
TRANSPORTS = ("tcp", "ws")
"""How storm clients may speak: a ``listening`` scheme of ``triochat serve``."""


class StormFailed(Exception):
    """The storm did not end as it must; the message says which client and why."""


def nicks(n: int) -> dict[bytes, int]:
    """The storm's nicks, each with its index."""
    return {b"s%d" % i: i for i in range(n)}


class Frames:
    """The payload of a server's WebSocket frames, as one stream of bytes.

    The server sends each batch of NDJSON lines as one final, unmasked text frame
    (:mod:`bench.wire`); a payload is passed on as it arrives, without waiting for
    the rest of its frame, so a large frame costs no copying. Any other frame (a
    fragment, a control frame, a masked one) is a :class:`StormFailed`: a close
    says its code and reason when they have come.
    """

    TEXT = 0x81
    """FIN and the text opcode: the only first byte a server sends here."""
    CLOSE = 0x88

    def __init__(self) -> None:
        self._left = 0
        """Payload bytes of the current frame not read yet."""
        self._partial = b""
        """The start of a frame header split by a read."""

    def payload(self, data: bytes) -> bytes:
        if self._partial:
            data, self._partial = self._partial + data, b""
        pieces = []
        pos, size = 0, len(data)
        while pos < size:
            if self._left:
                end = min(size, pos + self._left)
                pieces.append(data[pos:end])
                self._left -= end - pos
                pos = end
                continue
            length = data[pos + 1] & 0x7F if size - pos >= 2 else 0
            head = 2 + {126: 2, 127: 8}.get(length, 0)
            if size - pos < head:
                self._partial = data[pos:]
                break
            if length >= 126:
                length = int.from_bytes(data[pos + 2 : pos + head], "big")
            first, masked = data[pos], data[pos + 1] & 0x80
            if first != self.TEXT or masked:
                raise StormFailed(
                    self._refusal(first, masked, data[pos + head : pos + head + length])
                )
            pos += head
            self._left = length
        return b"".join(pieces)

    def _refusal(self, first: int, masked: int, body: bytes) -> str:
        if first == self.CLOSE:
            code = int.from_bytes(body[:2], "big") if len(body) >= 2 else None
            return f"closed by the server (code {code}, {body[2:].decode(errors='replace')!r})"
        return f"unexpected frame from the server: first byte {first:#04x}, masked {bool(masked)}"


class Roster:
    """What one storm client learns of the room from the bytes it reads, without a decoder.

    The head (welcome, its own joined, history, members) is decoded line by line;
    after ``members`` every line must be a ``joined`` of the storm room, found by a
    pattern. Each member counts once: a nick announced again, or already in
    ``members``, is a repeat.
    """

    def __init__(self, nick: bytes, everyone: Mapping[bytes, int]) -> None:
        self.nick = nick
        self.everyone = everyone
        self.seen = bytearray(len(everyone))
        self.known = 0
        self.head: list[dict[str, object]] = []
        self.level = False
        """Whether ``members`` has come: every line since must be a ``joined``."""
        self.repeats = 0
        self.strangers: list[bytes] = []
        """Nicks not in the storm, and lines after ``members`` that are not a ``joined``."""
        self._rest = b""

    @property
    def done(self) -> bool:
        return self.known == len(self.everyone)

    def feed(self, data: bytes) -> None:
        data = self._rest + data
        cut = data.rfind(b"\n") + 1
        self._rest = data[cut:]
        start = 0
        while not self.level and start < cut:
            end = data.index(b"\n", start) + 1
            event = json.loads(data[start:end])
            self.head.append(event)
            if event.get("type") == "members":
                self._learn([n.encode() for n in event.get("nicks", [])])
                self.level = True
            start = end
        if start < cut:
            found = JOINED.findall(data, start, cut)
            if data.count(TYPE, start, cut) != len(found):
                self.strangers += [
                    ln for ln in data[start:cut].splitlines() if not JOINED.search(ln)
                ]
            self._learn(found)

    def _learn(self, names: Sequence[bytes]) -> None:
        for name in names:
            index = self.everyone.get(name)
            if index is None:
                self.strangers.append(name)
            elif self.seen[index]:
                self.repeats += 1
            else:
                self.seen[index] = 1
                self.known += 1

    def problems(self) -> list[str]:
        """What differs from: welcome, own joined, history, members with itself, then
        exactly one ``joined`` for each member not in ``members``."""
        out = []
        kinds = [event.get("type") for event in self.head]
        if kinds != HEAD:
            out.append(f"began with {kinds}, not {HEAD}")
        elif self.head[1].get("nick") != self.nick.decode():
            out.append(f"its first joined is {self.head[1]}")
        if not self.seen[self.everyone[self.nick]]:
            out.append("it is not among the members it knows")
        if self.repeats:
            out.append(f"{self.repeats} members announced twice")
        if self.strangers:
            out.append(f"unexpected: {self.strangers[:2]!r}")
        if not self.done:
            out.append(f"knows {self.known} of {len(self.everyone)} members")
        return [f"{self.nick.decode()}: {problem}" for problem in out]


@dataclass
class Storm:
    """One storm's figures (``error`` says why there are none)."""

    clients: int
    transport: str = "tcp"
    """How the storm clients spoke (:data:`TRANSPORTS`); the innocent client speaks TCP."""
    server_cpu_s: float = 0.0
    wall_s: float = 0.0
    welcome_max_ms: float = 0.0
    welcome_median_ms: float = 0.0
    welcome_run_max_ms: float = 0.0
    """The most CPU the server's event loop used while an innocent client waited for its
    welcome: the wait in the server's own time, which the machine's other load does not
    stretch (a wall-clock wait does, by the time the server waits for a CPU)."""
    connect_max_ms: float = 0.0
    """The innocent client's slowest connect, which its welcome times do not include."""
    probes: int = 0
    rss_peak_mib: float = 0.0
    """The server's largest RSS, sampled every :data:`PROBE_EVERY` seconds."""
    loadgen_cpu_s: float = 0.0
    other_cpu_share: float | None = None
    """Busy time of the server's CPU not spent by the server (other processes, steal), as a
    share of the wall time; None when the server is not pinned to a CPU of its own."""
    error: str | None = None

    @property
    def label(self) -> str:
        """The storm's row: its transport (``tcp``, ``ws``)."""
        return self.transport


def measure_storm(
    clients: int,
    *,
    server_cpus: Sequence[int] | None,
    progress: Callable[[str], None],
    transport: str = "tcp",
) -> Storm:
    """Run one storm of ``clients`` speaking ``transport`` against a fresh ``triochat serve``.

    A storm that fails is a :class:`Storm` with an ``error``: only a ``transport`` not in
    :data:`TRANSPORTS` raises."""
    if transport not in TRANSPORTS:
        raise ValueError(f"transport {transport!r}: not one of {TRANSPORTS}")
    result = Storm(clients, transport)
    spec = servers.triochat(db_path=None)
    progress(f"join storm ({result.label}): {clients} clients into one room")
    try:
        with ExitStack() as sockets, servers.running(spec, cpus=server_cpus) as running:
            # Sockets close after the server stops: no leave storm on the way out.
            _storm(running, result, sockets, server_cpus)
    except (StormFailed, servers.ServerFailed, OSError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


def _storm(
    server: servers.RunningServer,
    result: Storm,
    sockets: ExitStack,
    server_cpus: Sequence[int] | None,
) -> None:
    server.wait_quiet()
    prober = Prober(server.urls["tcp"], server.run_s)
    busy0 = servers.cpu_busy_s(server_cpus) if server_cpus else 0.0
    cpu0, lg0, began = server.cpu_s(), time.process_time(), time.monotonic()
    prober.start()
    try:
        clients, rss = _join_all(server, result, sockets, began + TIMEOUT)
    finally:
        prober.stop()
    result.wall_s = time.monotonic() - began
    result.server_cpu_s = server.cpu_s() - cpu0
    result.loadgen_cpu_s = time.process_time() - lg0
    result.rss_peak_mib = rss / 2**20
    if server_cpus:
        other = servers.cpu_busy_s(server_cpus) - busy0 - result.server_cpu_s
        result.other_cpu_share = max(0.0, other) / result.wall_s
    problems = [p for client in clients for p in client.roster.problems()]
    if problems:
        raise StormFailed(f"{len(problems)} problems, first: {'; '.join(problems[:3])}")
    if prober.error:
        raise StormFailed(f"innocent client: {prober.error}")
    result.probes = len(prober.waits)
    result.connect_max_ms = max(prober.connects) * 1000
    result.welcome_max_ms = max(prober.waits) * 1000
    result.welcome_median_ms = statistics.median(prober.waits) * 1000
    result.welcome_run_max_ms = max(prober.runs) * 1000


class Client:
    """One storm client: its socket, what it has learnt, and (WebSocket) its framing."""

    __slots__ = ("accept", "frames", "head", "roster", "sock")

    def __init__(self, sock: socket.socket, roster: Roster, accept: bytes | None) -> None:
        self.sock = sock
        self.roster = roster
        self.accept = accept
        """The ``Sec-WebSocket-Accept`` awaited; None once upgraded, and for TCP."""
        self.head = b""
        """The upgrade response read so far."""
        self.frames = Frames() if accept is not None else None

    @property
    def nick(self) -> str:
        return self.roster.nick.decode()


def _join_all(
    server: servers.RunningServer, result: Storm, sockets: ExitStack, deadline: float
) -> tuple[list[Client], int]:
    """Open ``result.clients`` clients as fast as possible, reading all of them meanwhile,
    until each knows every member; the clients, and the server's peak RSS meanwhile."""
    n = result.clients
    address = server.urls[result.transport]
    everyone = nicks(n)
    rosters = [Roster(nick, everyone) for nick in everyone]
    clients: list[Client] = []
    by_fd: dict[int, Client] = {}
    ep = sockets.enter_context(select.epoll())
    finished = rss = 0
    sampled = 0.0
    while finished < n:
        now = time.monotonic()
        if now > deadline:
            raise StormFailed(f"{n - finished} of {n} clients not done after {TIMEOUT:.0f} s")
        if now - sampled >= PROBE_EVERY:
            rss, sampled = max(rss, server.rss()), now
        for roster in rosters[len(clients) : len(clients) + OPEN_PER_ROUND]:
            client = _open(address, roster, websocket=result.transport == "ws")
            sockets.enter_context(client.sock)
            clients.append(client)
            by_fd[client.sock.fileno()] = client
            ep.register(client.sock.fileno(), select.EPOLLIN)
        for fd, _ in ep.poll(0 if len(clients) < n else 0.5):
            if _read(by_fd[fd]):
                ep.unregister(fd)  # owed nothing more; it stays open, so nobody leaves
                finished += 1
    return clients, max(rss, server.rss())


def _open(address: tuple[str, int], roster: Roster, *, websocket: bool) -> Client:
    """A storm client, connected, its hello (TCP) or its upgrade request (WebSocket) sent,
    its socket non-blocking."""
    nick = roster.nick.decode()
    accept = None
    try:
        sock = socket.create_connection(address, timeout=10)
    except OSError as exc:
        raise StormFailed(f"{nick}: {exc}") from exc
    try:
        if websocket:
            request, accept = wire.upgrade_request(*address)
            sock.sendall(request)
        else:
            sock.sendall(wire.hello(nick, STORM_ROOM))
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise StormFailed(f"{nick}: {exc}") from exc
    return Client(sock, roster, accept)


def _read(client: Client) -> bool:
    """Read what ``client``'s socket has into its roster; whether it now knows every member."""
    roster = client.roster
    try:
        data = client.sock.recv(RECV_BYTES)
    except BlockingIOError:
        return False
    except OSError as exc:
        data, why = b"", str(exc)
    else:
        why = "end of stream"
    if not data:
        raise StormFailed(
            f"{client.nick}: closed by the server ({why}) knowing {roster.known} of "
            f"{len(roster.everyone)} members: evicted as a slow consumer if it fell that far behind"
        )
    if client.accept is not None:
        data = _upgrade(client, data)
    if client.frames is not None:
        try:
            data = client.frames.payload(data)
        except StormFailed as exc:
            raise StormFailed(
                f"{client.nick}: {exc} knowing {roster.known} of {len(roster.everyone)} members"
            ) from None
    roster.feed(data)
    return roster.done


def _upgrade(client: Client, data: bytes) -> bytes:
    """Read the upgrade response; once it is whole and accepting, send the hello and return
    what came after it (the first frames), else nothing."""
    assert client.accept is not None
    client.head += data
    end = client.head.find(b"\r\n\r\n")
    if end < 0:
        return b""
    head, rest = client.head[:end], client.head[end + 4 :]
    if not wire.upgrade_accepted(head, client.accept):
        first = head.split(b"\r\n", 1)[0].decode(errors="replace")
        raise StormFailed(f"{client.nick}: upgrade refused: {first}")
    client.accept, client.head = None, b""
    hello = wire.text_frame(wire.hello(client.nick, STORM_ROOM), os.urandom(4))
    try:
        sent = client.sock.send(hello)
    except OSError as exc:
        raise StormFailed(f"{client.nick}: {exc}") from exc
    if sent != len(hello):
        raise StormFailed(f"{client.nick}: socket buffer full on its hello")
    return rest


@dataclass(eq=False)
class Prober:
    """The innocent client: a thread that connects and times hello → welcome, again and again,
    on the wall clock and on the server's (``server_clock``: :meth:`RunningServer.run_s`)."""

    address: tuple[str, int]
    server_clock: Callable[[], float]
    waits: list[float] = field(default_factory=list)
    runs: list[float] = field(default_factory=list)
    """For each wait, the seconds the server's event loop ran during it."""
    connects: list[float] = field(default_factory=list)
    error: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="innocent", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Let the probe under way finish (it started during the storm), and no other."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(PROBE_TIMEOUT + 5)

    def _run(self) -> None:
        count = 0
        while not self._stop.is_set() and count < TIMEOUT / PROBE_EVERY:
            try:
                self.waits.append(self._probe(f"innocent{count}"))
            except (OSError, StormFailed) as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                return
            count += 1
            self._stop.wait(PROBE_EVERY)  # pacing between probes, not a synchronisation

    def _probe(self, nick: str) -> float:
        dialled = time.monotonic()
        with socket.create_connection(self.address, timeout=PROBE_TIMEOUT) as sock:
            began, ran = time.monotonic(), self.server_clock()
            self.connects.append(began - dialled)
            sock.sendall(wire.hello(nick, CALM_ROOM))
            got = b""
            while wire.WELCOME not in got:
                data = sock.recv(RECV_BYTES)
                if not data or wire.ERROR in data:
                    raise StormFailed(f"{nick}: no welcome: {data[:200]!r}")
                got += data
        self.runs.append(self.server_clock() - ran)
        return time.monotonic() - began
