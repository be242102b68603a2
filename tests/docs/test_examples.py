"""docs/protocol.md's example sessions are what a running server says today.

Sync tests running ``trio.run`` themselves: this directory is not one of the
Trio directories of tests/conftest.py.
"""

from __future__ import annotations

import pytest
import trio

from tests.docs.examples import TRANSPORTS, Transport, normalise, read_block, transcript


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_example_session_matches_a_live_server(transport: Transport) -> None:
    live = normalise(trio.run(transcript, transport))
    documented = normalise(read_block(transport))
    assert documented == live, (
        f"docs/protocol.md's {transport} example differs from a live run; if the server is"
        " right, rewrite it with: .venv/bin/python -m tests.docs.examples --write"
    )


def test_the_comparison_ignores_grouping_and_volatile_values_only() -> None:
    one_message = [
        'cy  ⇐ {"type":"welcome","server_id":"abc"}',
        '      {"type":"joined","seq":1,"ts":1795513604.558}',
        "      (the server is stopped with Ctrl-C)",
    ]
    two_messages = [
        'cy  ⇐ {"type":"welcome","server_id":"0123"}',
        'cy  ⇐ {"type":"joined","seq":1,"ts":1.5}',
        "      (the server is stopped with Ctrl-C)",
    ]
    assert normalise(one_message) == normalise(two_messages)
    other_seq = [*two_messages[:1], 'cy  ⇐ {"type":"joined","seq":2,"ts":1.5}', two_messages[2]]
    assert normalise(one_message) != normalise(other_seq)
    other_client = [two_messages[0], 'dee ⇐ {"type":"joined","seq":1,"ts":1.5}', two_messages[2]]
    assert normalise(one_message) != normalise(other_client)
