"""Real ``redis-server`` processes for tests: one server, or a small cluster, no mocks.

:func:`start_redis` runs one ``redis-server`` in a directory of the test's own
(``tmp_path``): its Unix socket, log and any append-only files live there, so two
tests (or two pytest-xdist workers) never share a server. It listens on TCP only
when given a port, and then on 127.0.0.1 only. :func:`start_cluster` runs
``masters`` such servers in cluster mode and joins them with ``redis-cli --cluster
create``.

Invariants:

- Started means answering: the functions return only once every server answers
  ``PING`` with ``+PONG`` (and a cluster says ``cluster_state:ok`` on every node),
  within a bounded wait; otherwise they raise :class:`RedisdError` with the
  server's log, having stopped whatever they had started.
- Stopped means gone: every exit path of the context managers ends each process
  (``SIGTERM``, then ``SIGKILL`` when it does not go in time) and reaps it, so a
  failing test leaves no ``redis-server`` behind.
- A restart is the same server: same arguments, directory, socket and port, so
  with ``appendfsync`` the data written before a :meth:`RedisServer.kill`
  survives :meth:`RedisServer.restart`, as it would survive a real crash.

Everything here is synchronous (a start takes some 50 ms); Trio tests may call
it directly or through ``trio.to_thread.run_sync``. Tests that need it carry
:data:`needs_redis`, so a machine without Redis skips them rather than fails
(``make test`` installs it: ``make system-deps``).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType

import pytest

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
"""Seconds a server has to answer ``PING`` (and a cluster to be ``ok``) after it starts."""
CREATE_TIMEOUT = 30.0
"""Seconds ``redis-cli --cluster create`` may take. It waits 1 s, then polls every 1 s
until the nodes agree: 1 to 4 s measured on 2 idle cores, 6 s with other tests running."""
STOP_TIMEOUT = 5.0
"""Seconds a server has to exit after ``SIGTERM`` before it is killed."""
POLL = 0.01
SOCKET_NAME = "redis.sock"
LOG_NAME = "redis.log"
MAX_SOCKET_PATH = 107
"""The longest Unix socket path Linux takes (``sun_path`` is 108 bytes with its NUL)."""

needs_redis = pytest.mark.skipif(
    shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
    reason="needs redis-server and redis-cli (make test installs them)",
)
"""Mark for tests that start Redis: skipped, with the reason, where it is not installed."""


class RedisdError(RuntimeError):
    """A server or cluster that did not start, or a ``redis-cli`` that failed."""


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now.

    All are held open until the last is chosen, so the kernel cannot hand out one
    twice; another process may still take one before it is used (rare: the ports
    come from the ephemeral range, at random).
    """
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((HOST, 0))
            ports.append(sock.getsockname()[1])
        return ports


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (see :func:`free_ports`)."""
    return free_ports(1)[0]


def ping(socket_path: Path, timeout: float = 1.0) -> bool:
    """Whether a server answers ``PING`` with ``+PONG`` on ``socket_path``.

    Any other answer (``-LOADING`` while it reads its append-only file) or no
    server at all (no socket yet, or a stale one) is ``False``.
    """
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(socket_path))
            sock.sendall(b"PING\r\n")
            answer = b""
            while not answer.endswith(b"\r\n"):
                data = sock.recv(64)
                if not data:
                    return False
                answer += data
            return answer == b"+PONG\r\n"
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process, restartable with the arguments it was started with.

    Its output (the Redis log) goes to ``redis.log`` in its directory, appended to
    by each restart; :class:`RedisdError` messages quote the current run's part.
    """

    def __init__(self, directory: Path, argv: list[str], *, port: int | None) -> None:
        self.directory = directory
        self.socket_path = directory / SOCKET_NAME
        self.log_path = directory / LOG_NAME
        self.port = port
        self.argv = argv
        self._process: subprocess.Popen[bytes] | None = None
        self._log_start = 0

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def tcp_url(self) -> str:
        """``redis://127.0.0.1:PORT``; only for a server started with a port."""
        if self.port is None:
            raise RedisdError(f"{self.url} was started without a TCP port")
        return f"redis://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return self._running().pid

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log(self) -> str:
        """What the server wrote since it was last (re)started."""
        try:
            with self.log_path.open("rb") as file:
                file.seek(self._log_start)
                return file.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> None:
        """Run the server and wait until it answers ``PING``; kill it if it does not."""
        if self.running():
            raise RedisdError(f"{self.url} is already running (pid {self.pid})")
        self.directory.mkdir(parents=True, exist_ok=True)
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self) -> None:
        process = self._running()
        deadline = time.monotonic() + START_TIMEOUT
        while not ping(self.socket_path):
            if process.poll() is not None:
                raise RedisdError(self._failure(f"exited with status {process.returncode}"))
            if time.monotonic() > deadline:
                raise RedisdError(self._failure(f"did not answer PING in {START_TIMEOUT} s"))
            time.sleep(POLL)

    def _failure(self, what: str) -> str:
        return f"redis-server {what}: {' '.join(self.argv)}\n--- {self.log_path} ---\n{self.log()}"

    def _running(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise RedisdError(f"{self.url} was never started")
        return self._process

    def kill(self) -> None:
        """``SIGKILL``, as a crash would end it (nothing flushed), and reap it."""
        process = self._running()
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """``SIGTERM`` (a clean shutdown) and wait for the exit.

        Raises :class:`subprocess.TimeoutExpired`, the server still running, when
        it takes longer than ``timeout``; :meth:`close` kills it then.
        """
        process = self._running()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(timeout)

    def close(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the server if it runs, killing it when it does not stop in ``timeout``."""
        if not self.running():  # never started, or gone and reaped by ``poll``
            return
        try:
            self.stop(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self) -> None:
        """Start again with the same arguments, directory, socket and port.

        A running server is stopped cleanly first; to test a crash, :meth:`kill` it
        before. With ``appendfsync`` its append-only file is read back at start.
        """
        if self.running():
            self.stop()
        self.start()

    def cli(self, *args: str) -> str:
        """``redis-cli`` against this server: its output, without the last newline.

        A command the server refuses is not an exception: redis-cli prints the
        error (``ERR ...``) and exits 0, so tests assert on the text. Only a
        redis-cli that fails itself (no server, for instance) raises.
        """
        return run_cli("-s", str(self.socket_path), *args)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def run_cli(*args: str, timeout: float = START_TIMEOUT) -> str:
    """Run ``redis-cli`` with ``args``; its output without the last newline."""
    done = subprocess.run(
        ["redis-cli", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RedisdError(
            f"redis-cli {' '.join(args)} exited with {done.returncode}: "
            f"{done.stderr.strip() or done.stdout.strip()}"
        )
    return done.stdout.removesuffix("\n")


def redis_argv(
    directory: Path, *, port: int | None, appendfsync: str | None, extra: Sequence[str]
) -> list[str]:
    """The command line of a server kept in ``directory`` (see :func:`start_redis`)."""
    socket_path = directory / SOCKET_NAME
    if len(str(socket_path).encode()) > MAX_SOCKET_PATH:
        raise RedisdError(
            f"Unix socket path longer than {MAX_SOCKET_PATH} bytes: {socket_path}; "
            "use a shorter directory (or TMPDIR)"
        )
    argv = ["redis-server", "--port", str(port or 0)]
    argv += ["--unixsocket", str(socket_path), "--unixsocketperm", "700"]
    argv += ["--save", "", "--dir", str(directory)]
    if appendfsync is None:
        argv += ["--appendonly", "no"]
    else:
        argv += ["--appendonly", "yes", "--appendfsync", appendfsync]
    if port is not None:
        argv += ["--bind", HOST]
    return [*argv, *extra]


def start_redis(
    directory: Path,
    *,
    port: int | None = None,
    appendfsync: str | None = None,
    extra: Sequence[str] = (),
) -> RedisServer:
    """A running ``redis-server`` kept in ``directory``, answering ``PING``.

    It listens on ``directory/redis.sock`` (mode 700), and on ``127.0.0.1:port``
    too when ``port`` is given (:func:`free_port`). It never saves snapshots;
    ``appendfsync`` (``always``, ``everysec``, ``no``) turns the append-only file
    on. ``extra`` arguments go last, so they override these. Use it as a context
    manager, which stops it on every way out.
    """
    directory = directory.resolve()  # redis-server changes into it; the URL must not move
    argv = redis_argv(directory, port=port, appendfsync=appendfsync, extra=extra)
    server = RedisServer(directory, argv, port=port)
    server.start()
    return server


class RedisCluster:
    """Cluster-mode servers on 127.0.0.1, every slot assigned; stopped together."""

    def __init__(self, nodes: list[RedisServer]) -> None:
        self.nodes = nodes

    @property
    def urls(self) -> list[str]:
        return [node.tcp_url for node in self.nodes]

    def cli(self, *args: str) -> str:
        """``redis-cli -c`` (following ``MOVED`` redirections) from the first node."""
        return run_cli("-c", "-h", HOST, "-p", str(self.nodes[0].port), *args)

    def close(self) -> None:
        """Stop every node (see :meth:`RedisServer.close`), each even if another fails."""
        with ExitStack() as stack:
            for node in self.nodes:
                stack.callback(node.close)

    def __enter__(self) -> RedisCluster:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def start_cluster(directory: Path, masters: int = 3) -> RedisCluster:
    """``masters`` servers in cluster mode, without replicas, joined and ``ok``.

    Node N is kept in ``directory/node-N``. Each gets an explicit cluster bus port:
    the default (its port + 10000) does not exist for ports above 55535, and free
    ports come from the ephemeral range (32768-60999 on Linux).
    """
    with ExitStack() as stack:
        nodes = []
        for n in range(1, masters + 1):
            node = _start_node(directory / f"node-{n}", n)
            stack.callback(node.close)
            nodes.append(node)
        addresses = [f"{HOST}:{node.port}" for node in nodes]
        create = ["--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"]
        run_cli(*create, timeout=CREATE_TIMEOUT)
        _wait_cluster_ok(nodes)
        stack.pop_all()  # started: from here the cluster's own close stops them
    return RedisCluster(nodes)


def _start_node(directory: Path, n: int, attempts: int = 3) -> RedisServer:
    """Cluster node ``n`` on two free ports, chosen again when one was taken meanwhile."""
    for attempt in range(1, attempts + 1):
        port, bus = free_ports(2)
        extra = ["--cluster-enabled", "yes", "--cluster-port", str(bus)]
        extra += ["--cluster-config-file", str(directory / f"nodes-{n}.conf")]
        try:
            return start_redis(directory, port=port, extra=extra)
        except RedisdError as error:
            if attempt == attempts or "Address already in use" not in str(error):
                raise
    raise AssertionError("unreachable")


def _wait_cluster_ok(nodes: list[RedisServer]) -> None:
    """Wait until every node says ``cluster_state:ok`` and knows all the others."""
    deadline = time.monotonic() + START_TIMEOUT
    want = {"cluster_state": "ok", "cluster_known_nodes": str(len(nodes))}
    for node in nodes:
        while True:
            info = dict(
                line.split(":", 1) for line in node.cli("CLUSTER", "INFO").split() if ":" in line
            )
            if all(info.get(key) == value for key, value in want.items()):
                break
            if time.monotonic() > deadline:
                raise RedisdError(
                    f"cluster not ok on {node.tcp_url} after {START_TIMEOUT} s: {info}"
                )
            time.sleep(POLL)
