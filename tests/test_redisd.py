"""tests/redisd.py against real servers: up, crashed, restarted, clustered, and gone after."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.redisd import (
    RedisdError,
    free_port,
    needs_redis,
    ping,
    run_cli,
    start_cluster,
    start_redis,
)

pytestmark = needs_redis


def gone(pid: int) -> bool:
    """Whether no process has ``pid`` (a reaped one; a zombie would still be listed)."""
    return not Path(f"/proc/{pid}").exists()


def test_a_started_server_answers_ping_on_its_socket_and_its_port(tmp_path: Path) -> None:
    port = free_port()
    with start_redis(tmp_path, port=port) as redis:
        assert ping(redis.socket_path)
        assert redis.url == f"unix://{tmp_path}/redis.sock"
        assert redis.tcp_url == f"redis://127.0.0.1:{port}"
        assert redis.cli("SET", "k", "v") == "OK"
        assert run_cli("-h", "127.0.0.1", "-p", str(port), "GET", "k") == "v"
        assert redis.cli("GET", "k") == "v"
        pid = redis.pid
    assert gone(pid)
    assert not ping(tmp_path / "redis.sock")


def test_without_a_port_there_is_no_tcp_url(tmp_path: Path) -> None:
    with start_redis(tmp_path) as redis:
        with pytest.raises(RedisdError, match="without a TCP port"):
            _ = redis.tcp_url
        assert redis.cli("CONFIG", "GET", "port").split() == ["port", "0"]


def test_a_key_written_with_appendfsync_always_survives_a_kill_and_restart(
    tmp_path: Path,
) -> None:
    port = free_port()
    with start_redis(tmp_path, port=port, appendfsync="always") as redis:
        assert redis.cli("SET", "survivor", "still here") == "OK"
        crashed = redis.pid
        redis.kill()
        assert gone(crashed)
        assert not ping(redis.socket_path)
        redis.restart()
        assert redis.pid != crashed
        assert redis.tcp_url == f"redis://127.0.0.1:{port}"
        assert redis.cli("GET", "survivor") == "still here"
        restarted = redis.pid
    assert gone(restarted)


def test_a_server_that_cannot_start_says_why_with_its_log(tmp_path: Path) -> None:
    with pytest.raises(RedisdError, match="exited with status") as failed:
        start_redis(tmp_path, extra=["--no-such-option", "yes"])
    assert "no-such-option" in str(failed.value)


def test_a_cluster_of_three_is_ok_and_routes_a_key_and_leaves_nothing_behind(
    tmp_path: Path,
) -> None:
    with start_cluster(tmp_path) as cluster:
        assert len(cluster.urls) == 3
        assert all(url.startswith("redis://127.0.0.1:") for url in cluster.urls)
        for node in cluster.nodes:
            assert "cluster_state:ok" in node.cli("CLUSTER", "INFO")
        assert cluster.cli("SET", "{tag}k", "v") == "OK"
        assert cluster.cli("GET", "{tag}k") == "v"
        pids = [node.pid for node in cluster.nodes]
    assert all(gone(pid) for pid in pids)


def test_a_failing_test_still_stops_its_server(tmp_path: Path) -> None:
    pids: list[int] = []

    def failing_test() -> None:
        with start_redis(tmp_path) as redis:
            pids.append(redis.pid)
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        failing_test()
    assert gone(pids[0])


def test_a_server_that_does_not_stop_in_time_is_killed(tmp_path: Path) -> None:
    with start_redis(tmp_path) as redis:
        os.kill(redis.pid, signal.SIGSTOP)  # frozen: it cannot act on SIGTERM
        with pytest.raises(subprocess.TimeoutExpired):
            redis.stop(timeout=0.2)
        assert redis.running()
        redis.close(timeout=0.2)
        assert gone(redis.pid)
