"""Every rule about names lives here: what a nick and a room may look like.

Nicks keep the case their owner chose but are unique case-insensitively
(``Bob`` and ``bob`` are the same person); :func:`nick_key` is that identity.
Room names are case-insensitive too and are stored lowercased, so ``#Lobby``
style variants cannot split one room in two.
"""

from __future__ import annotations

import re

from triochat.protocol.errors import ErrorCode, ProtocolError

MAX_NICK = 32
MAX_ROOM = 64
_NICK = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_ROOM = re.compile(r"[a-z0-9_][a-z0-9_.\-]*")

DEFAULT_ROOM = "lobby"


def nick_key(nick: str) -> str:
    return nick.casefold()


def check_nick(nick: str) -> str:
    """``nick`` if it is valid, else ``nick_invalid`` saying why."""
    if not 1 <= len(nick) <= MAX_NICK:
        raise ProtocolError(ErrorCode.NICK_INVALID, f"a nick has 1 to {MAX_NICK} characters")
    if not _NICK.fullmatch(nick):
        raise ProtocolError(
            ErrorCode.NICK_INVALID,
            "a nick uses letters, digits, '_', '-' and '.', and starts with a letter, digit or '_'",
        )
    return nick


def check_room(room: str) -> str:
    """The canonical (lowercase) name of ``room``, else ``room_invalid``."""
    name = room.lower()
    if not 1 <= len(name) <= MAX_ROOM:
        raise ProtocolError(ErrorCode.ROOM_INVALID, f"a room name has 1 to {MAX_ROOM} characters")
    if not _ROOM.fullmatch(name):
        raise ProtocolError(
            ErrorCode.ROOM_INVALID,
            "a room name uses letters, digits, '_', '-' and '.', and starts with a letter,"
            " digit or '_'",
        )
    return name
