"""Server processes under test: start, pin, read their CPU time and RSS, always stop.

A server is a child process started with ``PR_SET_PDEATHSIG``, so it receives
SIGTERM even if the bench itself dies without running its cleanup; in the
normal path :func:`running` stops it with SIGTERM (SIGKILL after a grace
period) on the way out of the ``with`` block, whatever happened inside.
Its stdout is read only for the ``listening`` lines; stderr goes to a file
whose tail is shown if the server fails.
"""

from __future__ import annotations

import ctypes
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0


class ServerFailed(Exception):
    """A server did not start, or died; the message carries its last words."""


@dataclass(frozen=True)
class ServerSpec:
    name: str
    argv: tuple[str, ...]
    schemes: tuple[str, ...]
    """The listener schemes it must announce before it counts as started."""
    cwd: str | None = None


TRIOCHAT = "triochat"
"""triochat's name in the tables."""


@dataclass(frozen=True)
class Certificates:
    """A private CA and a certificate for 127.0.0.1 it signed, as PEM files."""

    cafile: str
    pem: str
    """The server's key and certificate chain, in one file."""


def make_certificates(folder: str) -> Certificates:
    """A fresh CA and server certificate (trustme) in ``folder``, for the TLS rows."""
    import trustme  # a dev dependency, as the bench is

    ca = trustme.CA()
    made = Certificates(os.path.join(folder, "ca.pem"), os.path.join(folder, "server.pem"))
    ca.cert_pem.write_to_path(made.cafile)
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(made.pem)
    return made


def triochat(
    *,
    db_path: str | None,
    tls: Certificates | None = None,
    redis_url: str | None = None,
    node_id: str | None = None,
    metrics: bool = False,
) -> ServerSpec:
    """``triochat serve`` on free ports, flood control off, keepalive out of the way;
    with ``tls``, both listeners speak TLS (``wss``, ``tls``); with ``redis_url``, a
    node of ``serve --redis`` called ``node_id`` (history then lives in Redis)."""
    argv = [sys.executable, "-m", "triochat", "serve", "--host", "127.0.0.1"]
    argv += ["--port", "0", "--tcp-port", "0", "--rate-limit", "0"]
    # Receivers never speak; the default 30 s keepalive would probe them mid-run.
    argv += ["--keepalive-interval", "3600"]
    argv += ["--db", db_path] if db_path else ["--no-history"]
    if redis_url is not None:
        argv += ["--redis", redis_url] + (["--node-id", node_id] if node_id else [])
    if metrics:  # and /metrics, on its own listener (its URL under "http")
        argv += ["--metrics-port", "0"]
        return ServerSpec(name=TRIOCHAT, argv=tuple(argv), schemes=("ws", "tcp", "http"))
    if tls is None:
        return ServerSpec(name=TRIOCHAT, argv=tuple(argv), schemes=("ws", "tcp"))
    argv += ["--certfile", tls.pem, "--keyfile", tls.pem]
    return ServerSpec(name=TRIOCHAT, argv=tuple(argv), schemes=("wss", "tls"))


REFERENCES = {
    "websockets peer": "peer",
    "trio-websocket floor": "floor",
    "wsproto floor": "wsproto_floor",
}
"""Each reference server's name in the tables, and its module in this package."""


def reference(name: str) -> ServerSpec:
    """``python -m bench.<module> --port 0`` for the reference called ``name``."""
    argv = (sys.executable, "-m", f"bench.{REFERENCES[name]}", "--host", "127.0.0.1", "--port", "0")
    # Run from the directory holding the bench package, wherever the bench was started.
    root = str(Path(__file__).resolve().parents[1])
    return ServerSpec(name=name, argv=argv, schemes=("ws",), cwd=root)


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of every thread of ``pid`` so far (``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rpartition(b")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_run_s(pid: int) -> float:
    """Seconds the main thread of ``pid`` has run on a CPU so far, to the nanosecond
    (``/proc/<pid>/schedstat``): time waiting for a CPU held by others is not in it."""
    with open(f"/proc/{pid}/schedstat", "rb") as f:
        return int(f.read().split()[0]) / 1e9


def proc_rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (``VmRSS`` in ``/proc/<pid>/status``)."""
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024
    raise ServerFailed(f"no VmRSS for pid {pid}")


def cpu_busy_s(cpus: Sequence[int]) -> float:
    """Seconds ``cpus`` were not idle (steal included: time the hypervisor took away)."""
    wanted = {f"cpu{c}".encode() for c in cpus}
    busy = 0
    with open("/proc/stat", "rb") as f:
        for line in f:
            name, *values = line.split()
            if name in wanted:
                ticks = [int(v) for v in values[:8]]
                busy += sum(ticks) - ticks[3] - ticks[4]  # minus idle and iowait
    return busy / CLK_TCK


@dataclass(eq=False)
class RunningServer:
    spec: ServerSpec
    proc: subprocess.Popen[bytes]
    urls: dict[str, tuple[str, int]]
    stderr_path: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_s(self) -> float:
        self.check()
        return proc_cpu_s(self.pid)

    def run_s(self) -> float:
        """:func:`proc_run_s`: the event loop's own CPU time, whoever else is busy."""
        return proc_run_s(self.pid)

    def rss(self) -> int:
        self.check()
        return proc_rss(self.pid)

    def wait_quiet(self, *, below: float = 0.05, step: float = 0.2, limit: float = 10.0) -> None:
        """Return once the server used under ``below`` of a CPU for a ``step`` (or at ``limit``)."""
        deadline = time.monotonic() + limit
        before = self.cpu_s()
        while time.monotonic() < deadline:
            time.sleep(step)
            after = self.cpu_s()
            if after - before < below * step:
                return
            before = after

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise ServerFailed(
                f"{self.spec.name} exited ({self.proc.returncode}): {self.last_words()}"
            )

    def last_words(self) -> str:
        try:
            with open(self.stderr_path, errors="replace") as f:
                lines = f.read().strip().splitlines()
        except OSError:
            return "(no stderr)"
        return " | ".join(lines[-5:]) or "(no stderr)"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def child_setup(cpus: Sequence[int] | None) -> None:
    """Runs in the child before exec: die with the parent, stay on the server's CPU."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if cpus:
        os.sched_setaffinity(0, cpus)


@contextmanager
def running(spec: ServerSpec, *, cpus: Sequence[int] | None) -> Iterator[RunningServer]:
    """Start ``spec``; yield it once it listens; stop it on the way out, whatever happened."""
    with tempfile.NamedTemporaryFile(prefix="bench-server-", suffix=".log", delete=False) as log:
        stderr_path = log.name
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(
            spec.argv,
            cwd=spec.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,  # Ctrl-C reaches the bench, which stops us in order
            preexec_fn=lambda: child_setup(cpus),
        )
    server = RunningServer(spec=spec, proc=proc, urls={}, stderr_path=stderr_path)
    try:
        server.urls = _await_listening(server)
        yield server
    finally:
        server.stop()
        os.unlink(stderr_path)


def _await_listening(server: RunningServer) -> dict[str, tuple[str, int]]:
    """Read the ``listening`` lines straight from the pipe (no buffered reader to hide them)."""
    stdout = server.proc.stdout
    assert stdout is not None
    fd = stdout.fileno()
    urls: dict[str, tuple[str, int]] = {}
    pending = b""
    deadline = time.monotonic() + START_TIMEOUT
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while set(server.spec.schemes) - set(urls):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(remaining):
                raise ServerFailed(f"{server.spec.name} did not start: {server.last_words()}")
            chunk = os.read(fd, 4096)
            if not chunk:
                server.proc.wait(1)
                server.check()
                raise ServerFailed(f"{server.spec.name} closed its output: {server.last_words()}")
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                urls.update(_listening(line.decode(errors="replace").strip()))
    return urls


def _listening(line: str) -> dict[str, tuple[str, int]]:
    """``listening ws://127.0.0.1:5000`` → ``{"ws": ("127.0.0.1", 5000)}``; else nothing."""
    if not line.startswith("listening "):
        return {}
    scheme, _, rest = line.split(" ", 1)[1].partition("://")
    host, _, port = rest.partition("/")[0].rpartition(":")  # http://HOST:PORT/metrics too
    return {scheme: (host.strip("[]"), int(port))}
