"""``abuse``: five resource attacks each meet their bound; an innocent client notices nothing.

Theory of operation
-------------------
A *host* fills a room (the heap) with the longest messages the server takes,
each stored escaped (about 48 KB a line), and stays to watch it. An
*innocent* client lives in a room of its own. Then, one at a time:

1. **history flood**: a few clients that never read (a small receive buffer,
   fixed before connecting) join the heap and ask for ``history{limit:500}``
   many times in one write. The host must see each evicted
   (``left{slow_consumer}``) within ``--evict-within``.
2. **resume amplification**: more such clients say ``hello`` with
   ``resume: {heap: 0}`` (the heap's whole past) and never read. The host must
   see each join (the server is not stuck), and they stay connected.
3. **nested JSON**: a line of arrays nested 1,000 deep must get
   ``error{bad_json}``, and the same session's next ``say`` its ``ack``.
4. **room churn**: a churner ``join``s and ``part``s :data:`CHURN_ROOMS` fresh
   room names as fast as it can, reconnecting (one connection after another,
   from :data:`CHURN_FROM` on loopback) so that each connection's share fits
   in the per-connection flood burst: only what its address may do (its join
   rate) can hold it back. Across its connections it must be held back
   (``rate_limited``, or ``too_many_rooms``, or a disconnect or a refused
   connection) before it has made :data:`CHURN_BOUND` rooms, counted from its
   own ``joined`` in each. Empty rooms are freed only once the rooms in memory
   pass the server's ``--history-bytes``, so the rooms it made are a figure.
   Against a ``--url`` server on loopback (exempt from per-address limits by
   default) the check is skipped when nothing held the churner back.
5. **connection flood**: one address opens :data:`FLOOD_CONNECTIONS`
   connections and holds the ones it gets. The excess must be refused
   (``error{too_many_connections}`` on TCP, HTTP 429/503 on the WebSocket port).
   The harness's own server applies its per-address limits to loopback for
   this scenario (see :data:`harness.context.OWN_SERVER`); a ``--url`` server
   exempts loopback by default, so there the check is skipped when nothing
   was refused.

During each attack the innocent sends counted messages in its own room (all
must arrive, exactly once, in order, with no error) and a fresh client, from
another loopback address when the server is on 127.0.0.1 (so the per-address
limits the attack spends are not its own), must get from ``hello`` to
``welcome`` within :data:`WELCOME_WITHIN`. When the harness runs its own
server (it runs in this process), the process's peak resident memory may grow by
at most :data:`RSS_SLACK` plus twice ``outbox_bytes`` per attacker during
the history flood and the resume attack: what each attacker can pin is its
outbox, whatever it asks for.

The attackers are a fixed handful on top of ``--clients``, which this
scenario does not use.
"""

from __future__ import annotations

import ipaddress
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path

import trio

from harness.context import OWN_SERVER, Context, Target
from harness.fleet import Fleet, Sim
from harness.model import ScenarioResult
from harness.raw import RawClient, Refused, open_raw
from harness.scenarios.common import wait_until
from harness.traffic import Phase, connect_check, run_phase
from harness.wire import decode_line
from triochat.client import parse_url
from triochat.errors import ConnectionLost, TriochatError
from triochat.protocol import encode
from triochat.protocol.events import Hello, History, Join, Limits, Part, Quit, Say

NAME = "abuse"
PROVES = (
    "history floods, resume amplification, room churn, connection floods and deep JSON"
    " each meet their bound, and an innocent client notices nothing"
)
MIB = 1 << 20
HEAVY_CHAR = "\U0001f642"
"""Four bytes of UTF-8 on the wire and in memory for one character: the heaviest text
may hold (control characters, which JSON escapes to six, are refused)."""
HEAP_MESSAGES = 50
"""Heavy messages in the heap (about 1.6 MB): within the default burst of 60."""
HISTORY_ATTACKERS = 2
HISTORY_REQUESTS = 16
"""``history{limit:500}`` per attacker, in one write: the whole heap each, 26 MB asked for."""
RESUME_ATTACKERS = 16
CHURN_ROOMS = 300
CHURN_SHARE = 25
"""Fresh rooms per churner connection: 50 events, hello and quit within the default burst of 60."""
CHURN_BOUND = 150
"""A churner must be held back before it has made this many rooms (an address's
default join burst is 120)."""
CHURN_FROM = "127.0.0.3"
"""The churner's address when the server is on loopback: its join bucket is nobody else's."""
FLOOD_CONNECTIONS = 32
NESTING = 1000
RECEIVE_BUFFER = 4096
INNOCENT_MESSAGES = 10
INNOCENT_RATE = 100.0
WELCOME_WITHIN = 1.0
RSS_SLACK = 16 * MIB
ANSWER_WITHIN = 10.0
"""Seconds a raw client waits for an answer it is owed."""
GOODBYE_WITHIN = 1.0
"""Seconds a churner connection waits for the server to close it after its ``quit``."""
OTHER_LOOPBACK = "127.0.0.2"


async def run(ctx: Context, result: ScenarioResult) -> None:
    async with ctx.target(NAME) as target, trio.open_nursery() as nursery:
        fleet = Fleet(nursery, target.urls)
        innocent, host = await fleet.open(
            [ctx.nick(NAME, "innocent"), ctx.nick(NAME, "host")], [ctx.room(NAME, "-calm")]
        )
        if connect_check(result, [innocent, host]) and host.client is not None:
            assert host.client.welcome is not None
            limits = host.client.welcome.limits
            attacks = Attacks(ctx, result, target, fleet, innocent, host, limits)
            await host.client.join(attacks.heap)
            if await attacks.fill():
                for label, attack in (
                    ("history flood", attacks.history_flood),
                    ("resume amplification", attacks.resume_amplification),
                    ("nested JSON", attacks.nested_json),
                    ("room churn", attacks.room_churn),
                    ("connection flood", attacks.connection_flood),
                ):
                    await attacks.during(label, attack)
        await fleet.close(notes=result.notes)


Attack = Callable[[], Awaitable[None]]


class Attacks:
    def __init__(
        self,
        ctx: Context,
        result: ScenarioResult,
        target: Target,
        fleet: Fleet,
        innocent: Sim,
        host: Sim,
        limits: Limits,
    ) -> None:
        self.ctx = ctx
        self.result = result
        self.url = target.urls[0]
        self.own = target.server is not None
        self.fleet = fleet
        self.innocent = innocent
        self.host = host
        self.limits = limits
        self.calm = ctx.room(NAME, "-calm")
        self.heap = ctx.room(NAME, "-heap")
        self.welcome_s: float | None = None
        self.probes = 0
        host_name = parse_url(self.url).host
        on_loopback = host_name.startswith("127.")
        self.probe_from = OTHER_LOOPBACK if on_loopback else None
        self.churn_from = CHURN_FROM if on_loopback else None

    def nick(self, label: str) -> str:
        return self.ctx.nick(NAME, label)

    # --- the innocent -------------------------------------------------------------

    async def during(self, label: str, attack: Attack) -> None:
        """Run ``attack`` while the innocent chats; then check the innocent saw no difference."""
        self.welcome_s = None
        async with trio.open_nursery() as nursery:
            phases: list[Phase] = []

            async def chat() -> None:
                phases.append(
                    await run_phase(
                        self.ctx,
                        NAME,
                        label,
                        self.calm,
                        [self.innocent],
                        [self.innocent],
                        INNOCENT_MESSAGES,
                        rate=INNOCENT_RATE,
                    )
                )

            nursery.start_soon(chat)
            await attack()
        if self.welcome_s is None:  # the attack had no better moment to probe at
            await self.probe_welcome()
        self._innocent_check(label, phases[0])

    async def probe_welcome(self) -> None:
        """Time ``hello`` to ``welcome`` for a fresh client (another address on loopback)."""
        self.probes += 1
        nick = self.nick(f"probe{self.probes}")
        started = trio.current_time()
        try:
            with trio.fail_after(ANSWER_WITHIN):
                async with open_raw(self.url, local_address=self.probe_from) as raw:
                    await raw.hello(nick, [self.ctx.room(NAME, "-probe")])
                    self.welcome_s = trio.current_time() - started
                    await _quit(raw)
        except* (trio.TooSlowError, TriochatError, OSError):  # no welcome: the check says so
            pass

    def _innocent_check(self, label: str, phase: Phase) -> None:
        tally = self.innocent.tally
        lost, dup = tally.lost_and_duplicated(phase.book.sent, [0])
        sent = sum(phase.book.sent)
        errors = dict(tally.errors)
        welcome = self.welcome_s
        ok = (
            phase.complete
            and sent == INNOCENT_MESSAGES
            and lost == dup == 0
            and tally.out_of_order == tally.seq_defects == 0
            and not errors
            and welcome is not None
            and welcome < WELCOME_WITHIN
        )
        self.result.check(
            f"{label}: innocent unaffected",
            f"the innocent's {INNOCENT_MESSAGES} messages arrive exactly once, in order, no"
            f" error; a fresh client's hello→welcome < {WELCOME_WITHIN:g} s",
            ok,
            f"{sent} sent: lost {lost}, duplicated {dup}, out of order {tally.out_of_order},"
            f" errors {errors or 'none'}; welcome "
            + (f"in {welcome * 1000:.0f} ms" if welcome is not None else "never came"),
        )
        key = label.replace(" ", "_").lower()
        if welcome is not None:
            self.result.figures[f"{key}_welcome_ms"] = round(welcome * 1000, 1)

    # --- the heap -----------------------------------------------------------------

    async def fill(self) -> bool:
        """A filler puts :data:`HEAP_MESSAGES` heavy messages in the heap, one at a time.

        Each waits for the previous one's ``ack``, so the host (a member that
        reads) never has more than a message or two of them queued; after the
        burst they are paced under the announced rate.
        """
        say = encode(Say(room=self.heap, text=HEAVY_CHAR * self.limits.max_text))
        rate = self.limits.rate_limit
        burst = max(self.limits.burst - 4, 1) if rate > 0 else HEAP_MESSAGES
        acks, failure = 0, ""
        codes: list[str] = []
        try:
            with trio.fail_after(self.ctx.options.settle + HEAP_MESSAGES / max(rate, 1)):
                async with open_raw(self.url) as raw:
                    await raw.hello(self.nick("filler"), [self.heap])
                    for n in range(HEAP_MESSAGES):
                        if n >= burst:
                            await trio.sleep(1 / (0.9 * rate))
                        await raw.send_line(say)
                        while acks <= n and not codes:
                            for line in await raw.receive_lines():
                                event = decode_line(line)
                                acks += event.type == "ack"
                                if event.type == "error":
                                    codes.append(event.code)
                        self.ctx.progress(f"{NAME}: filling the heap", acks, HEAP_MESSAGES)
                    await _quit(raw)
        except* trio.TooSlowError:
            failure = "; timed out"
        except* (TriochatError, OSError) as group:
            failure = f"; {_first(group)}"
        return self.result.check(
            "heap filled",
            f"{HEAP_MESSAGES} messages of {self.limits.max_text} escaped characters are"
            " accepted into the attacked room",
            acks == HEAP_MESSAGES,
            f"{acks}/{HEAP_MESSAGES} acked, errors {codes or 'none'}{failure}",
        )

    # --- 1. history flood ---------------------------------------------------------

    async def history_flood(self) -> None:
        nicks = [self.nick(f"hoard{i}") for i in range(HISTORY_ATTACKERS)]
        ask = encode(History(room=self.heap, limit=500))
        before = rss()
        async with AsyncExitStack() as stack:
            for nick in nicks:
                raw = await stack.enter_async_context(
                    open_raw(self.url, receive_buffer=RECEIVE_BUFFER)
                )
                with suppress(ConnectionLost):
                    await raw.hello(nick, [self.heap])
                    await _send_all(raw, [ask] * HISTORY_REQUESTS)
            evicted = await wait_until(
                self.ctx,
                f"{NAME}: history flood, waiting for evictions",
                lambda: (sum(1 for n in nicks if self._evicted(n)), len(nicks)),
                self.ctx.options.evict_within,
            )
            grown = _growth(before)
            await self.probe_welcome()
        seen = sum(1 for n in nicks if self._evicted(n))
        self.result.check(
            "history flood: hoarders evicted",
            f"each of {len(nicks)} clients that never read and ask history{{limit:500}}"
            f" x {HISTORY_REQUESTS} gets left{{slow_consumer}} within"
            f" {self.ctx.options.evict_within:g} s",
            evicted,
            f"{seen}/{len(nicks)} evicted as slow consumers"
            f" ({self._reasons(nicks) or 'no left at all'})",
        )
        self._memory_check("history flood", len(nicks), grown)

    def _evicted(self, nick: str) -> bool:
        return any(left.reason == "slow_consumer" for left in self.host.tally.left_of(nick))

    def _reasons(self, nicks: list[str]) -> str:
        return ", ".join(
            sorted({left.reason for n in nicks for left in self.host.tally.left_of(n)})
        )

    # --- 2. resume amplification --------------------------------------------------

    async def resume_amplification(self) -> None:
        nicks = [self.nick(f"resume{i}") for i in range(RESUME_ATTACKERS)]
        before = rss()
        refused: list[str] = []
        async with AsyncExitStack() as stack:
            for nick in nicks:
                try:
                    raw = await stack.enter_async_context(
                        open_raw(self.url, receive_buffer=RECEIVE_BUFFER)
                    )
                    await raw.hello(nick, [], resume={self.heap: 0})
                except (TriochatError, OSError) as exc:
                    refused.append(f"{nick}: {exc}")
            joined = await wait_until(
                self.ctx,
                f"{NAME}: resume amplification, waiting for the joins",
                lambda: (sum(1 for n in nicks if self.host.tally.joined[n]), len(nicks)),
                ANSWER_WITHIN,
            )
            grown = _growth(before)
            await self.probe_welcome()
            stuck = [n for n in nicks if self.host.tally.left_of(n)]
        self.result.check(
            "resume amplification: server keeps serving",
            f"{len(nicks)} clients resuming the heap from seq 0 and never reading are"
            " welcomed and joined (the host sees each), and none is dropped while it holds on",
            joined and not refused and not stuck,
            f"{sum(1 for n in nicks if self.host.tally.joined[n])}/{len(nicks)} joined,"
            f" {len(stuck)} dropped" + (f"; {refused[0]}" if refused else ""),
        )
        self._memory_check("resume amplification", len(nicks), grown)

    # --- 3. nested JSON -----------------------------------------------------------

    async def nested_json(self) -> None:
        deep = b"[" * NESTING + b"]" * NESTING + b"\n"
        room = self.ctx.room(NAME, "-deep")
        codes: list[str] = []
        acked = False
        failure = ""
        try:
            with trio.fail_after(ANSWER_WITHIN):
                async with open_raw(self.url) as raw:
                    await raw.hello(self.nick("deep"), [room])
                    await raw.send_line(deep)
                    await raw.send_line(encode(Say(room=room, text="still here", id=1)))
                    while not acked:
                        for line in await raw.receive_lines():
                            event = decode_line(line)
                            if event.type == "error":
                                codes.append(event.code)
                            acked = acked or event.type == "ack"
                    await _quit(raw)
        except* trio.TooSlowError:
            failure = f"; no ack within {ANSWER_WITHIN:g} s"
        except* (TriochatError, OSError) as group:
            failure = f"; {_first(group)}"
        self.result.check(
            "nested JSON: bad_json, session goes on",
            f"a line nested {NESTING} deep gets error{{bad_json}} (and nothing else), and"
            " the next say on the same connection its ack",
            codes == ["bad_json"] and acked,
            f"errors {codes or 'none'}, ack {'received' if acked else 'missing'}{failure}",
        )

    # --- 4. room churn ------------------------------------------------------------

    async def room_churn(self) -> None:
        churn = Churn()
        share = self._churn_share()
        rooms = [self.ctx.room(NAME, f"-c{i}") for i in range(CHURN_ROOMS)]
        shares = [rooms[i : i + share] for i in range(0, CHURN_ROOMS, share)]
        with trio.move_on_after(ANSWER_WITHIN) as deadline:
            for i, mine in enumerate(shares):
                await self._churn_connection(churn, self.nick(f"churner{i}"), mine)
                self.ctx.progress(f"{NAME}: room churn", i + 1, len(shares))
        if deadline.cancelled_caught:
            churn.failures.append(f"not done within {ANSWER_WITHIN:g} s")
        rate_limited, too_many = churn.errors["rate_limited"], churn.errors["too_many_rooms"]
        held = rate_limited + too_many + churn.dropped
        self.result.figures.update(
            churn_rooms_created=churn.made, churn_connections=churn.connections
        )
        observed = (
            f"join+part for {CHURN_ROOMS} fresh rooms over {churn.connections} connections one"
            f" after another (at most {share} rooms each): {churn.made} rooms made, {rate_limited}"
            f" rate_limited, {too_many} too_many_rooms, {churn.dropped} disconnected or refused"
            + "".join(f"; {failure}" for failure in churn.failures[:1])
        )
        passed: bool | None = held > 0 and churn.made < CHURN_BOUND
        if not held and self.limits.rate_limit <= 0:
            passed, observed = None, "skipped: the server has flood control off; " + observed
        elif not held and not self.own and await _on_loopback(self.url):
            passed, observed = (
                None,
                "skipped: nothing held the churner back (loopback is exempt from per-address"
                " limits unless the server runs with --limit-loopback); " + observed,
            )
        self.result.check(
            "room churn: held back",
            f"a client making fresh rooms as fast as it can, reconnecting to get round the"
            f" per-connection flood limit, is rate_limited or refused (too_many_rooms) or"
            f" disconnected before it has made {CHURN_BOUND}"
            + ("" if self.own else "; skipped when nothing holds back a client on loopback"),
            passed,
            observed,
        )

    def _churn_share(self) -> int:
        """Fresh rooms per churner connection: hello, a join and a part each, and quit fit
        in the announced burst, so the per-connection flood limit alone never holds it back."""
        if self.limits.rate_limit <= 0:
            return CHURN_SHARE
        return max(1, min(CHURN_SHARE, (self.limits.burst - 2) // 2))

    async def _churn_connection(self, churn: Churn, nick: str, rooms: list[str]) -> None:
        """One churner connection: ``join`` and ``part`` each of ``rooms`` in one go, read
        every answer (its own ``joined`` and ``left``, or an ``error``), then ``quit``."""
        fresh = set(rooms)
        events = [encode(cls(room=r)) for r in rooms for cls in (Join, Part)]
        answered = 0

        def read(lines: list[bytes]) -> int:
            """Count ``lines`` into ``churn``; how many of them answer a churn event."""
            answers = 0
            for line in lines:
                event = decode_line(line)
                if event.type == "error":
                    churn.errors[event.code] += 1
                    answers += 1
                elif event.nick == nick and event.room in fresh:
                    if event.type == "joined":
                        churn.made += 1
                        answers += 1
                    elif event.type == "left":
                        answers += 1
            return answers

        churn.connections += 1
        try:
            async with open_raw(self.url, local_address=self.churn_from) as raw:
                for line in await raw.hello(nick, [self.ctx.room(NAME, "-churn")]):
                    if line.startswith(b'{"type":"error"'):  # its home room's join, say
                        read([line])
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_send_all, raw, events)
                    while answered < len(events):
                        answered += read(await raw.receive_lines())
                await _quit(raw)
                with trio.move_on_after(GOODBYE_WITHIN):
                    while True:  # until the server closes: the quit is done, the nick free
                        read(await raw.receive_lines())
        except* ConnectionLost:
            churn.dropped += answered < len(events)
        except* Refused as group:
            churn.dropped += 1
            churn.failures.append(str(_first(group)))
        except* (TriochatError, OSError) as group:
            churn.failures.append(str(_first(group)))

    # --- 5. connection flood ------------------------------------------------------

    async def connection_flood(self) -> None:
        accepted = refused = 0
        other: list[str] = []
        held: list[RawClient] = []
        room = self.ctx.room(NAME, "-flood")
        async with AsyncExitStack() as stack:
            for i in range(FLOOD_CONNECTIONS):
                outcome = await _try_connection(stack, self.url, self.nick(f"f{i}"), room, held)
                if outcome == "accepted":
                    accepted += 1
                elif outcome == "refused":
                    refused += 1
                else:
                    other.append(outcome)
            await self.probe_welcome()
            for raw in held:
                with suppress(TriochatError, OSError):
                    await _quit(raw)
        self.result.figures.update(connections_accepted=accepted, connections_refused=refused)
        observed = (
            f"{FLOOD_CONNECTIONS} connections from one address: {accepted} accepted,"
            f" {refused} refused" + (f"; other: {other[0]}" if other else "")
        )
        if self.own:  # the harness applied the per-address limits to loopback (OWN_SERVER)
            cap = OWN_SERVER.get(NAME, {}).get("max_connections_per_ip", FLOOD_CONNECTIONS)
            passed: bool | None = refused > 0 and accepted <= cap and not other
            criterion = (
                f"the connections over the address's limit ({cap}) are refused"
                " (too_many_connections on TCP, HTTP 429/503 on WebSocket)"
            )
        else:
            passed = refused > 0 and not other if refused else None
            criterion = (
                "connections over the address's limit are refused (too_many_connections,"
                " HTTP 429/503); skipped when nothing is refused"
            )
            if passed is None:
                observed = (
                    "skipped: the server refused none (loopback is exempt from per-address"
                    " limits unless it runs with --limit-loopback); " + observed
                )
        self.result.check("connection flood: excess refused", criterion, passed, observed)

    # --- memory -------------------------------------------------------------------

    def _memory_check(self, label: str, attackers: int, grown: int | None) -> None:
        key = label.replace(" ", "_").lower()
        bound = RSS_SLACK + 2 * attackers * self.limits.outbox_bytes
        if grown is not None:
            self.result.figures[f"{key}_rss_growth_mib"] = round(grown / MIB, 1)
        if not self.own or grown is None:
            return  # another process's memory is not ours to read
        self.result.check(
            f"{label}: memory bounded",
            f"the server's peak resident memory grows by at most {RSS_SLACK // MIB} MiB + 2 x"
            f" outbox_bytes per attacker ({bound / MIB:.1f} MiB for {attackers})",
            grown <= bound,
            f"grew {grown / MIB:.1f} MiB",
        )


@dataclass
class Churn:
    """What the churner got, over all its connections."""

    made: int = 0
    """Fresh rooms it joined (its own ``joined`` in each): rooms it made."""
    connections: int = 0
    dropped: int = 0
    """Connections closed (or refused) before every join and part was answered."""
    errors: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


async def _try_connection(
    stack: AsyncExitStack, url: str, nick: str, room: str, held: list[RawClient]
) -> str:
    """``accepted`` (welcomed; kept in ``held``), ``refused`` (as documented), or what happened."""
    try:
        raw = await stack.enter_async_context(open_raw(url))
    except Refused as exc:
        if exc.status in (429, 503) and b"too_many_connections" in exc.body:
            return "refused"
        return f"HTTP {exc.status} {exc.body[:80]!r}"
    except (TriochatError, OSError) as exc:
        return str(exc)
    with suppress(ConnectionLost):  # a refused TCP connection may be closed already
        await raw.send_line(encode(Hello(nick=nick, rooms=[room])))
    try:
        with trio.fail_after(ANSWER_WITHIN):
            while True:
                for line in await raw.receive_lines():
                    event = decode_line(line)
                    if event.type == "welcome":
                        held.append(raw)
                        return "accepted"
                    if event.type == "error" and event.code == "too_many_connections":
                        return "refused"
    except trio.TooSlowError:
        return f"no answer to hello within {ANSWER_WITHIN:g} s"
    except (TriochatError, OSError) as exc:
        return f"closed without too_many_connections: {exc}"


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception in ``group``, however deeply nested (a raw client's body runs in
    its nursery, so whatever it raises arrives in a group)."""
    found: BaseException = group
    while isinstance(found, BaseExceptionGroup):
        found = found.exceptions[0]
    return found


async def _on_loopback(url: str) -> bool:
    """Whether ``url``'s host is a loopback address (as the harness connects to it)."""
    address = parse_url(url)
    with suppress(OSError):
        infos = await trio.socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
        return ipaddress.ip_address(infos[0][4][0]).is_loopback
    return False


async def _send_all(raw: RawClient, lines: list[bytes]) -> None:
    """Every line in one write on TCP; one message each on WebSocket."""
    if raw.is_ws:
        for line in lines:
            await raw.send_line(line)
    else:
        await raw.send_line(b"".join(lines))


async def _quit(raw: RawClient) -> None:
    with suppress(ConnectionLost):
        await raw.send_line(encode(Quit(reason="harness run finished")))


def _status(field: str) -> int | None:
    """A size from /proc/self/status in bytes (the in-process server lives in this process)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return None


def rss() -> int | None:
    """This process's resident memory now, after resetting its peak (so :func:`_growth`
    sees the most the attack made it hold, not just what is left afterwards)."""
    with suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def _growth(before: int | None) -> int | None:
    """The peak resident memory since :func:`rss` gave ``before``, less ``before``."""
    after = _status("VmHWM") or _status("VmRSS")
    return None if before is None or after is None else after - before
