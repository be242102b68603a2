"""``serve --redis rediss://…``: a node reaches Redis over TLS, checking its certificate
against ``--redis-cafile`` (a trustme CA), and refuses one it cannot check."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
import trio
import trustme

from tests.redisd import free_port, needs_redis, start_redis
from tests.server.conftest import TEST_CONFIG
from triochat.client import open_client
from triochat.errors import RedisError
from triochat.protocol.events import Ack
from triochat.server import Server, serve

pytestmark = needs_redis


async def test_a_node_speaks_tls_to_redis_and_checks_its_certificate() -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    with tempfile.TemporaryDirectory(prefix="tc-t-") as folder:
        here = Path(folder)
        ca.cert_pem.write_to_path(str(here / "ca.pem"))
        cert.private_key_and_cert_chain_pem.write_to_path(str(here / "redis.pem"))
        port = free_port()
        tls = [
            f"--tls-port {port}",
            f"--tls-cert-file {here / 'redis.pem'}",
            f"--tls-key-file {here / 'redis.pem'}",
            f"--tls-ca-cert-file {here / 'ca.pem'}",
            "--tls-auth-clients no",
        ]
        extra = [word for option in tls for word in option.split(" ", 1)]
        with start_redis(here, extra=extra):
            url = f"rediss://127.0.0.1:{port}"
            config = replace(TEST_CONFIG, redis_url=url, redis_cafile=str(here / "ca.pem"))
            async with trio.open_nursery() as nursery:
                node: Server = await nursery.start(serve, config)
                with trio.fail_after(10):
                    async with open_client(node.url("tcp"), "ada") as ada:
                        await ada.say("lobby", "over tls")
                        while not isinstance(await ada.receive(), Ack):
                            pass
                node.stop()
            with pytest.raises(RedisError, match="cannot connect"):
                await serve(replace(TEST_CONFIG, redis_url=url))  # the system's CAs: refused
