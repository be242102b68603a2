"""Registered nicks with ``--redis``: every node shares one set of accounts, in Redis,
whether registered over the wire on one node or by the operator's command."""

from __future__ import annotations

import sys

import pytest
import trio

from tests.redisd import needs_redis
from tests.server.conftest import TEST_CONFIG
from tests.server.helpers import skip_until
from tests.server.nodes import run_nodes
from triochat.client import open_client
from triochat.errors import Rejected
from triochat.protocol.events import Notice

pytestmark = needs_redis

PASSWORD = "correct horse battery"


async def test_a_nick_registered_on_one_node_is_protected_on_every_node() -> None:
    async with run_nodes(TEST_CONFIG, count_=2) as nodes:
        first, second = (server.url("tcp") for server in nodes.servers)
        with trio.fail_after(20):
            async with open_client(first, "ada") as ada:
                await ada.register(PASSWORD)
                notice = await skip_until(ada, Notice)
                assert notice.code == "registered"
            with pytest.raises(Rejected) as refused:
                async with open_client(second, "ada"):
                    pass
            assert refused.value.code == "auth_required"
            async with open_client(second, "ada", password=PASSWORD) as again:
                assert again.welcome is not None


async def test_the_operator_s_command_registers_in_redis() -> None:
    async with run_nodes(TEST_CONFIG, count_=2) as nodes:
        command = [sys.executable, "-m", "triochat", "account"]
        redis = ["--redis", nodes.redis.url]
        added = await trio.run_process(
            [*command, "add", "bob", *redis], stdin=f"{PASSWORD}\n".encode(), capture_stdout=True
        )
        assert added.stdout.decode().strip() == "bob: registered"
        with trio.fail_after(20):
            for server in nodes.servers:
                with pytest.raises(Rejected) as refused:
                    async with open_client(server.url("ws"), "bob", password="wrong password"):
                        pass
                assert refused.value.code == "auth_failed"
            async with open_client(nodes.url("tcp"), "bob", password=PASSWORD) as bob:
                assert bob.welcome is not None
        listed = await trio.run_process([*command, "list", *redis], capture_stdout=True)
        assert listed.stdout.decode().split() == ["bob"]
        gone = await trio.run_process(
            [*command, "remove", "nobody", *redis], capture_stderr=True, check=False
        )
        assert gone.returncode == 1
        assert gone.stderr.decode().strip() == "triochat account: nobody: no such account"
