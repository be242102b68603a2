"""The bench's own ``redis-server``: started for the Redis section, always stopped.

A small equivalent of tests/redisd.py (the bench does not import from the tests):
one server kept in a short temporary folder (a Unix socket path has at most 107
bytes), listening on ``DIR/redis.sock`` only, never saving. It runs as a child
with ``PR_SET_PDEATHSIG`` like the servers of :mod:`bench.servers`, pinned to the
CPUs it is given, so its CPU time is read from ``/proc/<pid>/stat`` like theirs.
:func:`info` reads ``INFO`` sections over the socket with a few lines of RESP.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench import servers

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
SOCKET_NAME = "redis.sock"


class RedisFailed(servers.ServerFailed):
    """redis-server is missing, did not answer, or died."""


@dataclass(frozen=True)
class Redis:
    server: servers.RunningServer
    """The process (its log is the ``stderr_path``, quoted when it fails)."""
    socket_path: str

    @property
    def pid(self) -> int:
        return self.server.pid

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def calls(self) -> dict[str, int]:
        """Calls per command so far (see :func:`command_calls`); :class:`RedisFailed` if the
        server cannot be asked."""
        try:
            return command_calls(self.socket_path)
        except (OSError, ValueError) as exc:
            self.server.check()  # gone: say how, with its log
            raise RedisFailed(f"redis-server (pid {self.pid}) did not answer INFO: {exc}") from None

    def cpu_s(self) -> float:
        """User + system CPU seconds of the server (every thread) so far."""
        return self.server.cpu_s()


def available() -> bool:
    return shutil.which("redis-server") is not None


def command(socket_path: str, *args: str, timeout: float = 2.0) -> bytes:
    """One command over the Unix socket; the raw reply (a bulk string's body, or the line)."""
    payload = b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args
    )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(socket_path)
        sock.sendall(payload)
        reply = b""
        while b"\r\n" not in reply:
            chunk = sock.recv(65536)
            if not chunk:
                raise OSError("connection closed")
            reply += chunk
        head, _, rest = reply.partition(b"\r\n")
        if not head.startswith(b"$"):
            return head
        size = int(head[1:])
        while len(rest) < size:
            chunk = sock.recv(65536)
            if not chunk:
                raise OSError("connection closed")
            rest += chunk
        return rest[:size]


def info(socket_path: str, section: str) -> dict[str, str]:
    """``INFO section`` as ``{field: value}``."""
    text = command(socket_path, "INFO", section).decode(errors="replace")
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def command_calls(socket_path: str) -> dict[str, int]:
    """Calls per command so far (``INFO commandstats``), commands run by functions included."""
    calls: dict[str, int] = {}
    for name, value in info(socket_path, "commandstats").items():
        fields = dict(part.split("=", 1) for part in value.split(",") if "=" in part)
        calls[name.removeprefix("cmdstat_")] = int(fields.get("calls", "0"))
    return calls


@contextmanager
def running(*, cpus: Sequence[int] | None) -> Iterator[Redis]:
    """A fresh ``redis-server`` answering ``PING``; stopped (SIGTERM, then SIGKILL) on exit."""
    if not available():
        raise RedisFailed("redis-server is not installed (make system-deps installs it)")
    folder = tempfile.mkdtemp(prefix="tc-b-", dir="/tmp")
    socket_path = str(Path(folder) / SOCKET_NAME)
    argv = ["redis-server", "--port", "0", "--unixsocket", socket_path]
    argv += ["--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--dir", folder]
    spec = servers.ServerSpec(name="redis-server", argv=tuple(argv), schemes=())
    log_path = Path(folder) / "redis.log"
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=lambda: servers.child_setup(cpus),
            )
        server = servers.RunningServer(spec=spec, proc=proc, urls={}, stderr_path=str(log_path))
        try:
            _await_ping(server, socket_path)
            yield Redis(server, socket_path)
        finally:
            server.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _await_ping(server: servers.RunningServer, socket_path: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        server.check()
        try:
            if command(socket_path, "PING", timeout=0.5) == b"+PONG":
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RedisFailed(f"redis-server did not answer PING: {server.last_words()}")
        time.sleep(0.01)
