"""``bad_input``: clients send malformed lines; each gets its documented error code.

Each bad client runs one script over a raw connection (any bytes we like) and
must get exactly the listed ``error`` codes, in order; the oversized line comes
last because ``too_large`` also closes the connection (framing is lost). The
other members run counted traffic meanwhile and must be untouched: 100%, in
order, no errors. With plain ``ws://`` or ``tcp://`` targets those members are
split over ``--workers`` shards (:mod:`harness.sharded`); the bad clients stay
in this process.
"""

from __future__ import annotations

import trio

from harness import sharded
from harness.context import Context
from harness.fleet import Fleet
from harness.model import ScenarioResult
from harness.raw import RawClient, open_raw
from harness.swarm import lean_url
from harness.traffic import (
    connect_check,
    delivery_checks,
    open_members,
    outcome_checks,
    run_phase,
)
from harness.wire import decode_line
from triochat.errors import ConnectionLost, TriochatError

NAME = "bad_input"
DEFAULT_MAX_LINE = 64 * 1024
"""The ``max_line`` assumed of a server whose ``welcome`` did not say."""
PROVES = "malformed input gets its documented error code and harms nobody else"


def script(room: str, nobody: str, max_line: int, ws: bool) -> list[tuple[bytes | None, str]]:
    """(line sent after hello, expected code); ``None`` means a binary WebSocket frame."""
    steps: list[tuple[bytes | None, str]] = [
        (b"this is not json\n", "bad_json"),
        (b'{"type":"shout","room":"x"}\n', "bad_event"),
        (f'{{"type":"say","room":"{room}"}}\n'.encode(), "bad_event"),
        (f'{{"type":"say","room":"{room}","text":""}}\n'.encode(), "bad_event"),
        (b'{"type":"say","room":"nowhere-at-all","text":"hi"}\n', "not_in_room"),
        (f'{{"type":"dm","to":"{nobody}","text":"hi"}}\n'.encode(), "no_such_user"),
        (b'{"type":"hello","nick":"again"}\n', "bad_event"),
        (b'{"type":"nick","nick":"not a nick!"}\n', "nick_invalid"),
        (None, "bad_event") if ws else (b'\xff\xfe{"type":"who"}\n', "bad_json"),
    ]
    oversized = b'{"type":"say","room":"x","text":"' + b"x" * (max_line + 16) + b'"}\n'
    return [*steps, (oversized, "too_large")]


async def run(ctx: Context, result: ScenarioResult) -> None:
    n = ctx.options.clients
    bad = min(max(1, n // 10), 10)
    good = max(n - bad, 2)
    async with ctx.target(NAME) as target:
        if all(lean_url(url) for url in target.urls):
            await _sharded(ctx, result, target.urls, good, bad)
        else:
            await _in_process(ctx, result, target.urls, good, bad)


async def _in_process(
    ctx: Context, result: ScenarioResult, urls: list[str], good: int, bad: int
) -> None:
    room = ctx.room(NAME)
    async with trio.open_nursery() as nursery:
        fleet = Fleet(nursery, urls)
        sims = await open_members(ctx, fleet, NAME, room, good)
        if connect_check(result, sims):
            max_line = fleet.limits.max_line if fleet.limits else DEFAULT_MAX_LINE
            async with trio.open_nursery() as scripts:
                outcomes = _start_scripts(ctx, scripts, urls, room, max_line, bad)
                phase = await run_phase(
                    ctx, NAME, "", room, sims, sims, ctx.options.fault_messages()
                )
            _codes_check(result, outcomes)
            delivery_checks(result, phase, "every well-behaved client")
        await fleet.close(notes=result.notes)


async def _sharded(
    ctx: Context, result: ScenarioResult, urls: list[str], good: int, bad: int
) -> None:
    room = ctx.room(NAME)
    scripts: list[list[str | None]] = []

    def start(nursery: trio.Nursery, members: sharded.Members) -> None:
        max_line = members.limits.max_line if members.limits else DEFAULT_MAX_LINE
        scripts.append(_start_scripts(ctx, nursery, urls, room, max_line, bad))

    outcome = await sharded.phase_beside(ctx, result, NAME, urls, good, room, start)
    if outcome is not None:
        _codes_check(result, scripts[0])
        outcome_checks(result, "", outcome, "every well-behaved client")


def _start_scripts(
    ctx: Context, nursery: trio.Nursery, urls: list[str], room: str, max_line: int, bad: int
) -> list[str | None]:
    """Start the ``bad`` clients' scripts; what each found wrong, once they are done."""
    outcomes: list[str | None] = [None] * bad
    for i in range(bad):
        url = urls[i % len(urls)]
        nick = ctx.nick(NAME, f"bad{i}")
        nursery.start_soon(_run_script, ctx, url, nick, room, max_line, outcomes, i)
    return outcomes


def _codes_check(result: ScenarioResult, outcomes: list[str | None]) -> None:
    failed = [o for o in outcomes if o is not None]
    result.check(
        "documented error codes",
        "each malformed input gets its error code, in order; too_large closes",
        not failed,
        f"{len(outcomes) - len(failed)}/{len(outcomes)} bad clients got exactly the expected"
        " codes" + (f"; {failed[0]}" if failed else ""),
    )


async def _run_script(
    ctx: Context,
    url: str,
    nick: str,
    room: str,
    max_line: int,
    outcomes: list[str | None],
    index: int,
) -> None:
    """Record None in ``outcomes[index]`` if the server answered exactly as documented."""
    try:
        with trio.fail_after(2 * ctx.options.settle):
            async with open_raw(url) as raw:
                outcomes[index] = await _converse(ctx, raw, nick, room, max_line)
    except trio.TooSlowError:
        outcomes[index] = f"{nick}: no complete answer within {2 * ctx.options.settle:g} s"
    except (TriochatError, OSError) as exc:
        outcomes[index] = f"{nick}: {exc}"


async def _converse(
    ctx: Context, raw: RawClient, nick: str, room: str, max_line: int
) -> str | None:
    await raw.send_line(b'{"type":"who"}\n')  # before hello: hello_first
    codes = _codes(await raw.hello(nick, [room]))
    steps = script(room, ctx.nick(NAME, "nobody"), max_line, raw.is_ws)
    expected = ["hello_first"] + [code for _, code in steps]
    for line, _ in steps[:-1]:
        await (raw.send_binary(b"\x00\x01") if line is None else raw.send_line(line))
    closed = False
    try:
        # The oversized line goes alone, once the rest is answered: see docs/harness.md.
        while len(codes) < len(expected) - 1:
            codes += _codes(await raw.receive_lines())
        oversized = steps[-1][0]
        assert oversized is not None
        await raw.send_line(oversized)
        while True:  # too_large must end the connection
            codes += _codes(await raw.receive_lines())
    except ConnectionLost:
        closed = True
    if codes != expected:
        return f"{nick}: expected {expected}, got {codes}"
    return None if closed else f"{nick}: connection not closed after too_large"


def _codes(lines: list[bytes]) -> list[str]:
    return [decode_line(line).code for line in lines if line.startswith(b'{"type":"error"')]
