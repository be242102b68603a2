"""``--redis URL``: the forms it takes, the password never shown, and a bad one refused
in one line before anything starts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from triochat.server.redis_url import parse_redis_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://10.0.0.5:6380/2", "redis://10.0.0.5:6380/2"),
        ("rediss://:s3cret@redis.example:6379", "rediss://:***@redis.example:6379"),
        ("redis://chat:s3cret@10.0.0.5", "redis://chat:***@10.0.0.5"),
        ("unix:///run/redis/redis.sock", "unix:///run/redis/redis.sock"),
    ],
)
def test_a_password_is_never_shown(url: str, shown: str) -> None:
    assert parse_redis_url(url).shown == shown


def test_the_parts_of_a_url() -> None:
    target = parse_redis_url("rediss://chat:p%40ss@10.0.0.5:6380/3")
    assert (target.host, target.port, target.db, target.tls) == ("10.0.0.5", 6380, 3, True)
    assert (target.username, target.password) == ("chat", "p@ss")
    assert parse_redis_url("unix:///run/r.sock").path == "/run/r.sock"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://10.0.0.5", "the scheme must be"),
        ("redis://10.0.0.5/x", "must be numbers"),
        ("unix://", "needs a path"),
        ("redis://", "no host"),
    ],
)
def test_a_bad_url_is_one_line_before_anything_starts(url: str, why: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "triochat", "serve", "--redis", url],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "--redis" in lines[0]
    assert why in lines[0]
