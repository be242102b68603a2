"""Hypothesis strategies for what a hostile or broken client might send."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

CLIENT_TYPES = [
    "hello",
    "join",
    "part",
    "say",
    "dm",
    "nick",
    "who",
    "history",
    "ping",
    "pong",
    "quit",
]
FIELDS = ["nick", "rooms", "resume", "room", "text", "id", "to", "before_seq", "limit", "token"]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)

# Plausible names, so events sometimes pass validation and reach the hub's rules.
names = st.sampled_from(["lobby", "dev", "Lobby", "ada", "x" * 65, "", "bad name", "-x"])
field_values = (
    json_values | names | st.lists(names, max_size=3) | st.dictionaries(names, st.integers())
)


def _event(kind: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, **fields}


# Objects shaped like client events: a real type and some of the real field names, so
# field validation and the server's handlers are exercised, not only "unknown type".
event_like: st.SearchStrategy[dict[str, Any]] = st.builds(
    _event,
    st.sampled_from(CLIENT_TYPES) | st.text(max_size=8),
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), field_values, max_size=5),
)

json_lines = json_values.map(lambda value: json.dumps(value).encode() + b"\n")
event_lines = event_like.map(lambda obj: json.dumps(obj).encode() + b"\n")

# One thing a client writes: raw bytes, a JSON line, or an event-shaped line.
writes = st.binary(max_size=200) | json_lines | event_lines
