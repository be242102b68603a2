"""``triochat account``, run as a subprocess, on the data file of a running ``triochat serve``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trio

from tests.server.test_accounts import refused
from tests.server.test_cli import serving
from triochat.client import open_client
from triochat.protocol import ErrorCode

ACCOUNT = [sys.executable, "-m", "triochat", "account"]


async def account(*args: str, password: str | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run ``triochat account args``, with ``password`` as its (non-terminal) stdin."""
    stdin = (password + "\n").encode() if password is not None else b""
    return await trio.run_process(
        [*ACCOUNT, *args], stdin=stdin, capture_stdout=True, capture_stderr=True, check=False
    )


async def test_accounts_change_on_a_running_server_without_a_restart(tmp_path: Path) -> None:
    db = str(tmp_path / "data.sqlite3")
    with trio.fail_after(60):
        async with serving("--port", "0", "--tcp-port", "0", "--db", db) as (_, urls):
            tcp = next(url for url in urls if url.startswith("tcp://"))
            added = await account("add", "Ada", "--db", db, password="first password")
            assert (added.returncode, added.stdout) == (0, b"Ada: registered\n")
            assert (await refused(tcp, "ada")).code == ErrorCode.AUTH_REQUIRED
            async with open_client(tcp, "ada", password="first password") as ada:
                assert ada.welcome is not None

            changed = await account("passwd", "ada", "--db", db, password="second password")
            assert changed.returncode == 0
            rejected = await refused(tcp, "ada", password="first password")
            assert rejected.code == ErrorCode.AUTH_FAILED
            async with open_client(tcp, "ada", password="second password") as ada:
                assert ada.welcome is not None

            listed = await account("list", "--db", db)
            assert (listed.returncode, listed.stdout) == (0, b"Ada\n")
            removed = await account("remove", "ADA", "--db", db)
            assert removed.returncode == 0
            async with open_client(tcp, "ada") as guest:  # a guest nick again
                assert guest.welcome is not None


async def test_account_errors_are_one_line_with_their_exit_code(tmp_path: Path) -> None:
    db = str(tmp_path / "data.sqlite3")
    with trio.fail_after(60):
        assert (await account("add", "ada", "--db", db, password="pw")).returncode == 0
        cases = [
            (("add", "ADA"), "x", 1, "already registered"),  # the same account by nick_key
            (("remove", "bob"), None, 1, "no such account"),
            (("passwd", "bob"), "x", 1, "no such account"),
            (("add", "bob"), "", 2, "the password is empty"),
            (("add", "b b"), "x", 2, "a nick may not hold spaces"),
        ]
        for args, password, code, says in cases:
            done = await account(*args, "--db", db, password=password)
            lines = done.stderr.decode().splitlines()
            assert done.returncode == code, (args, lines)
            assert len(lines) == 1, lines
            assert says in lines[0]
            assert lines[0].startswith("triochat account: ")
        listed = await account("list", "--db", db)
        assert listed.stdout == b"ada\n"
