"""A join storm: N clients join one room as fast as they can (issue 13, finding 7).

Every join is announced to every member, so a storm of N joins owes N(N+1)/2
``joined`` deliveries. While it runs, an *innocent* client connects every
:data:`PROBE_EVERY` seconds, says hello to another room and times how long its
``welcome`` takes: the storm must not starve anyone else.

The end of the storm. A storm client knows the room's members from the
``members`` it gets on joining plus every ``joined`` after it (:class:`Roster`);
the storm is over once every storm client knows all N members: each has its
welcome, and every ``joined`` owed to it (the last joiner's included) has
reached it. Nothing waits on a clock: the loop reads until that is true, or
fails at :data:`TIMEOUT`.

Storm clients read everything they are sent (readers are the expensive case)
in one epoll loop in the bench's own process, on the load generator's CPU; the
innocent client (:class:`Prober`) is a thread with a blocking socket, so its clock
waits for neither that loop nor, in tests/server/test_join_storm.py, the storm's
Trio tasks. The server's CPU is ``utime + stime`` from /proc between the first
connect and the end; its RSS is sampled every :data:`PROBE_EVERY` seconds.
"""

from __future__ import annotations

import json
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


class StormFailed(Exception):
    """The storm did not end as it must; the message says which client and why."""


def nicks(n: int) -> dict[bytes, int]:
    """The storm's nicks, each with its index."""
    return {b"s%d" % i: i for i in range(n)}


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
    server_cpu_s: float = 0.0
    wall_s: float = 0.0
    welcome_max_ms: float = 0.0
    welcome_median_ms: float = 0.0
    probes: int = 0
    rss_peak_mib: float = 0.0
    """The server's largest RSS, sampled every :data:`PROBE_EVERY` seconds."""
    loadgen_cpu_s: float = 0.0
    error: str | None = None


def measure_storm(
    clients: int, *, server_cpus: Sequence[int] | None, progress: Callable[[str], None]
) -> Storm:
    """Run one storm of ``clients`` against a fresh ``triochat serve``; never raises."""
    result = Storm(clients)
    spec = servers.triochat("triochat", db_path=None)
    progress(f"join storm: {clients} clients into one room")
    try:
        with ExitStack() as sockets, servers.running(spec, cpus=server_cpus) as server:
            # Sockets close after the server stops: no leave storm on the way out.
            _storm(server, clients, result, sockets)
    except (StormFailed, servers.ServerFailed, OSError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


def _storm(server: servers.RunningServer, n: int, result: Storm, sockets: ExitStack) -> None:
    server.wait_quiet()
    prober = Prober(server.urls["tcp"])
    cpu0, lg0, began = server.cpu_s(), time.process_time(), time.monotonic()
    prober.start()
    try:
        rosters, rss = _join_all(server, n, sockets, began + TIMEOUT)
    finally:
        prober.stop()
    result.wall_s = time.monotonic() - began
    result.server_cpu_s = server.cpu_s() - cpu0
    result.loadgen_cpu_s = time.process_time() - lg0
    result.rss_peak_mib = rss / 2**20
    problems = [p for roster in rosters for p in roster.problems()]
    if problems:
        raise StormFailed(f"{len(problems)} problems, first: {'; '.join(problems[:3])}")
    if prober.error:
        raise StormFailed(f"innocent client: {prober.error}")
    result.probes = len(prober.waits)
    result.welcome_max_ms = max(prober.waits) * 1000
    result.welcome_median_ms = statistics.median(prober.waits) * 1000


def _join_all(
    server: servers.RunningServer, n: int, sockets: ExitStack, deadline: float
) -> tuple[list[Roster], int]:
    """Open ``n`` clients as fast as possible, reading all of them meanwhile, until each
    knows every member; the rosters, and the server's peak RSS meanwhile."""
    address = server.urls["tcp"]
    everyone = nicks(n)
    rosters = [Roster(nick, everyone) for nick in everyone]
    by_fd: dict[int, tuple[socket.socket, Roster]] = {}
    ep = sockets.enter_context(select.epoll())
    opened = finished = rss = 0
    sampled = 0.0
    while finished < n:
        now = time.monotonic()
        if now > deadline:
            raise StormFailed(f"{n - finished} of {n} clients not done after {TIMEOUT:.0f} s")
        if now - sampled >= PROBE_EVERY:
            rss, sampled = max(rss, server.rss()), now
        for roster in rosters[opened : opened + OPEN_PER_ROUND]:
            sock = sockets.enter_context(_open(address, roster.nick))
            by_fd[sock.fileno()] = (sock, roster)
            ep.register(sock.fileno(), select.EPOLLIN)
            opened += 1
        for fd, _ in ep.poll(0 if opened < n else 0.5):
            sock, roster = by_fd[fd]
            if _read(sock, roster):
                ep.unregister(fd)  # owed nothing more; it stays open, so nobody leaves
                finished += 1
    return rosters, max(rss, server.rss())


def _open(address: tuple[str, int], nick: bytes) -> socket.socket:
    """A storm client, connected, its hello sent, its socket non-blocking."""
    try:
        sock = socket.create_connection(address, timeout=10)
        sock.sendall(wire.hello(nick.decode(), STORM_ROOM))
    except OSError as exc:
        raise StormFailed(f"{nick.decode()}: {exc}") from exc
    sock.setblocking(False)
    return sock


def _read(sock: socket.socket, roster: Roster) -> bool:
    """Read what ``sock`` has into ``roster``; whether it now knows every member."""
    try:
        data = sock.recv(RECV_BYTES)
    except BlockingIOError:
        return False
    except OSError as exc:
        data, why = b"", str(exc)
    else:
        why = "end of stream"
    if not data:
        raise StormFailed(
            f"{roster.nick.decode()}: closed by the server ({why}) knowing {roster.known} of "
            f"{len(roster.everyone)} members: evicted as a slow consumer if it fell that far behind"
        )
    roster.feed(data)
    return roster.done


@dataclass(eq=False)
class Prober:
    """The innocent client: a thread that times connect + hello → welcome, again and again."""

    address: tuple[str, int]
    waits: list[float] = field(default_factory=list)
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
        began = time.monotonic()
        with socket.create_connection(self.address, timeout=PROBE_TIMEOUT) as sock:
            sock.sendall(wire.hello(nick, CALM_ROOM))
            got = b""
            while wire.WELCOME not in got:
                data = sock.recv(RECV_BYTES)
                if not data or wire.ERROR in data:
                    raise StormFailed(f"{nick}: no welcome: {data[:200]!r}")
                got += data
        return time.monotonic() - began
