"""What an operator reads: at the default level a start line and one line per session
start and end (address, nick, transport, duration, reason); libraries stay quiet;
``--log-format json`` is one object per line with stable field names."""

from __future__ import annotations

import json
import signal

import trio

from tests.server.test_cli import serving
from triochat.client import open_client
from triochat.protocol.events import Left

SERVE = ("--port", "0", "--tcp-port", "0", "--no-history")


async def _visit(url: str, nick: str) -> None:
    """Say hello, then quit and read to the end."""
    async with open_client(url, nick) as client:
        await client.quit()
        async for _ in client:
            pass


async def test_json_logs_carry_the_start_and_each_session_with_stable_fields() -> None:
    with trio.fail_after(20):
        async with serving(*SERVE, "--log-format", "json") as (proc, urls):
            await _visit(urls[0], "ada")
            await proc.wait_for_log('"session_end"')
            proc.process.send_signal(signal.SIGTERM)
            assert await proc.process.wait() == 0
            lines = [json.loads(line) for line in (await proc.stderr()).splitlines()]
    for line in lines:
        assert {"ts", "level", "logger", "message"} <= set(line), line
    events = {line.get("event"): line for line in lines}
    assert events["start"]["listeners"] == urls
    assert events["start"]["history"] == "memory only"
    start, end = events["session_start"], events["session_end"]
    assert (start["nick"], start["transport"]) == ("ada", "ws")
    assert start["remote"] == end["remote"]
    assert (end["nick"], end["transport"], end["reason"]) == ("ada", "ws", "quit")
    assert 0 <= end["duration_s"] < 20


async def test_text_logs_at_the_default_level_name_each_session_and_nothing_else() -> None:
    with trio.fail_after(20):
        async with serving(*SERVE) as (proc, urls):
            await _visit(urls[1], "bob")
            async with open_client(urls[0], "cy") as cy, open_client(urls[1], "dee") as dee:
                await dee.aclose()  # gone without a word: disconnected
                while not isinstance(await cy.receive(), Left):
                    pass
            await proc.wait_for_log("session end: cy")
            proc.process.send_signal(signal.SIGTERM)
            assert await proc.process.wait() == 0
            text = await proc.stderr()
    lines = text.splitlines()
    assert any("session start: bob over tcp" in line for line in lines), text
    assert any(
        "session end: bob over tcp after" in line and line.endswith(": quit") for line in lines
    )
    assert any(
        "session end: dee over tcp" in line and line.endswith(": disconnected") for line in lines
    )
    for line in lines:
        logger = line.split(" ")[3]
        assert logger.startswith("triochat"), f"a library's line at the default level: {line}"
