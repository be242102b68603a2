"""What the harness puts on the wire and how it reads it back, cheaply.

Every counted message carries its sender and sequence in its text::

    h:<sender>:<n>:<scheduled_ns>

so a receiver can tell lost, duplicated and out-of-order messages exactly, and
measure latency from the time the message was *scheduled* (open loop: a slow
server cannot hide its delay behind a slow sender). Other harness traffic uses
other prefixes (``b:`` bulk, ``f:`` flood, ``c:`` churn) and is never counted.

Receivers decode lines into :class:`Line`, a struct of the few fields the
harness looks at: msgspec skips the rest without building objects, which is
what lets a thousand receivers keep up.
"""

from __future__ import annotations

import time

import msgspec

COUNTED = "h:"
ROOM_EVENTS = frozenset({"joined", "left", "message", "topic"})
"""The events that take a room's next ``seq`` (docs/protocol.md, section 7)."""


class Line(msgspec.Struct, gc=False):
    type: str
    room: str | None = None
    seq: int = -1
    nick: str = ""
    reason: str = ""
    text: str = ""
    code: str = ""
    nicks: list[str] | None = None


_DECODER = msgspec.json.Decoder(Line)
decode_line = _DECODER.decode
decode_lines = _DECODER.decode_lines


def now_ns() -> int:
    """The harness clock (monotonic); scheduled and received stamps both use it."""
    return time.perf_counter_ns()


def counted_text(sender: int, n: int, scheduled_ns: int) -> str:
    return f"{COUNTED}{sender}:{n}:{scheduled_ns}"


def parse_counted(text: str) -> tuple[int, int, int] | None:
    """``(sender, n, scheduled_ns)`` of a counted message, None for any other text."""
    if not text.startswith(COUNTED):
        return None
    try:
        _, sender, n, scheduled = text.split(":")
        return int(sender), int(n), int(scheduled)
    except ValueError:  # not four parts, or not numbers
        return None
