"""The bench's reference servers speak the protocol subset its load generator uses.

Each runs as the bench runs it (``bench.servers.running``, a real process on
127.0.0.1) and must deliver one broadcast to every member of a room, sender
included, as one text message line with the room's first ``seq``. A reference
that silently lost deliveries would make every ratio in docs/performance.md a lie.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from bench import servers

TIMEOUT = 10


def _receive(ws: ClientConnection) -> dict[str, Any]:
    message = ws.recv(timeout=TIMEOUT)
    assert isinstance(message, str), "references send text messages"
    (line,) = message.splitlines()
    event: dict[str, Any] = json.loads(line)
    return event


@pytest.mark.parametrize("name", sorted(servers.REFERENCES))
def test_reference_fans_a_broadcast_out_to_every_member(name: str) -> None:
    with servers.running(servers.reference(name), cpus=None) as server, ExitStack() as stack:
        host, port = server.urls["ws"]
        members = []
        for i in range(3):
            ws = stack.enter_context(connect(f"ws://{host}:{port}", open_timeout=TIMEOUT))
            ws.send(json.dumps({"type": "hello", "nick": f"n{i}", "rooms": ["r"]}) + "\n")
            assert _receive(ws)["type"] == "welcome"
            members.append(ws)
        members[0].send(json.dumps({"type": "say", "room": "r", "text": "hi", "id": 7}) + "\n")
        for ws in members:
            event = _receive(ws)
            assert (event["type"], event["seq"], event["text"]) == ("message", 1, "hi")
            assert (event["from"], event["id"]) == ("n0", 7)
