"""The bench's reference servers speak the protocol subset its load generator uses.

Each runs as the bench runs it (``bench.servers.running``, a real process on
127.0.0.1) and must deliver one broadcast to every member of a room, sender
included, as a ``message`` line with the room's first ``seq``; and its ``welcome``
must mean membership, as triochat's does. A reference that silently lost
deliveries would make every ratio in docs/performance.md a lie.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from bench import servers

TIMEOUT = 10
ROUNDS = 100
"""Newcomers per server in the welcome test; a wsproto floor that joined after its
welcome's send lost the say in about 4 rounds of 10 and always within the first 10."""


class Client:
    """One connection read line by line: a server may batch several lines in one message."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.lines: deque[str] = deque()

    def send(self, **event: Any) -> None:
        self.ws.send(json.dumps(event) + "\n")

    def receive(self) -> dict[str, Any]:
        while not self.lines:
            message = self.ws.recv(timeout=TIMEOUT)
            assert isinstance(message, str), "references send text messages"
            self.lines.extend(message.splitlines())
        event: dict[str, Any] = json.loads(self.lines.popleft())
        return event


@contextmanager
def member(server: servers.RunningServer, nick: str) -> Iterator[Client]:
    """A client that has said hello to room ``r`` and holds its welcome."""
    host, port = server.urls["ws"]
    with connect(f"ws://{host}:{port}", open_timeout=TIMEOUT) as ws:
        client = Client(ws)
        client.send(type="hello", nick=nick, rooms=["r"])
        assert client.receive()["type"] == "welcome"
        yield client


@pytest.mark.parametrize("name", sorted(servers.REFERENCES))
def test_reference_fans_a_broadcast_out_to_every_member(name: str) -> None:
    with servers.running(servers.reference(name), cpus=None) as server, ExitStack() as stack:
        members = [stack.enter_context(member(server, f"n{i}")) for i in range(3)]
        members[0].send(type="say", room="r", text="hi", id=7)
        for client in members:
            event = client.receive()
            assert (event["type"], event["seq"], event["text"]) == ("message", 1, "hi")
            assert (event["from"], event["id"]) == ("n0", 7)


@contextmanager
def one_cpu() -> Iterator[list[int]]:
    """Pin this thread, and the threads it starts, to one CPU, which is yielded for the server.

    On one shared CPU the server's write of a welcome can wake the client before
    the server runs its next line, which is the order a join-after-welcome race needs;
    on two, the server has usually joined before the client even reads.
    """
    before = os.sched_getaffinity(0)
    cpu = min(before)
    os.sched_setaffinity(0, {cpu})
    try:
        yield [cpu]
    finally:
        os.sched_setaffinity(0, before)


@pytest.mark.parametrize("name", sorted(servers.REFERENCES))
def test_reference_welcome_means_membership(name: str) -> None:
    """A say sent once a newcomer holds its welcome reaches the newcomer.

    The say leaves only after the welcome arrived, so a server that welcomes
    before it joins the newcomer to the room can run the say in between and skip
    the newcomer; each round gives that race another chance.
    """
    with (
        one_cpu() as cpus,
        servers.running(servers.reference(name), cpus=cpus) as server,
        member(server, "old") as old,
    ):
        for i in range(ROUNDS):
            with member(server, f"new{i}") as new:
                old.send(type="say", room="r", text=str(i), id=i)
                assert old.receive()["text"] == str(i)
                try:
                    event = new.receive()
                except TimeoutError:
                    pytest.fail(f"newcomer {i} never got the say sent after its welcome")
                assert (event["type"], event["text"]) == ("message", str(i))
