"""What the reference servers share: the protocol subset the load generator speaks, and a CLI.

``bench.peer``, ``bench.floor`` and ``bench.wsproto_floor`` each answer a
``hello`` with one ``welcome`` and push every ``say`` to every member of its
room as a ``message`` line, built here so that all of them (and triochat)
put the same bytes on the wire for the same broadcast.
"""

from __future__ import annotations

import argparse
import json
import time

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def welcome(nick: str, rooms: list[str]) -> str:
    return _encode({"type": "welcome", "nick": nick, "rooms": rooms}) + "\n"


def message(room: str, seq: int, nick: str, text: str, ref: object) -> str:
    """A ``message`` line as triochat sends it: the fields and order of its protocol."""
    event = {
        "type": "message",
        "room": room,
        "seq": seq,
        "from": nick,
        "text": text,
        "ts": round(time.time(), 3),
        "id": ref,
    }
    return _encode(event) + "\n"


def parse_args(description: str) -> argparse.Namespace:
    """``--host`` and ``--port``: where to listen (``--port 0`` picks a free port)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    return parser.parse_args()
