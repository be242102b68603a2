"""The input line's language: ``/command args`` or plain text, parsed without side effects."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

COMMANDS: dict[str, str] = {
    "/join": "/join ROOM — join a room (or switch to it); #dev and dev are the same",
    "/part": "/part [ROOM] — leave the current room (or ROOM)",
    "/me": "/me ACTION — say what you do: /me waves shows * you waves",
    "/msg": "/msg NICK TEXT — a direct message (opens the @NICK view)",
    "/topic": "/topic [TEXT] — show the room's topic, or set it (/topic -delete clears it)",
    "/list": "/list [AFTER] — rooms with people in them, their size and topic",
    "/who": "/who [ROOM|*] — who is in this room (or ROOM, or * for everyone online)",
    "/nick": "/nick NAME — change your nick",
    "/reconnect": "/reconnect — retry now instead of waiting (also Ctrl-R)",
    "/quit": "/quit [REASON] — leave the chat",
    "/help": "/help — this list (also F1)",
}
HELP_KEYS = (
    "Enter sends · //text says a line starting with / · Tab completes commands, nicks and #rooms",
    "Up/Down walk what you typed · PageUp/PageDown (or Shift-) scroll the log, "
    "older history loads at the top",
    "Ctrl-Home/Ctrl-End jump to the oldest/newest line · Ctrl-N/Ctrl-P next/previous room",
    "F2 shows/hides the room list · F3 shows/hides the member list · F1 help",
    "Ctrl-R reconnects now · Ctrl-Q or Ctrl-C quits",
)
CLEAR_TOPIC = "-delete"


@dataclass(frozen=True)
class Say:
    text: str
    action: bool = False


@dataclass(frozen=True)
class Join:
    room: str


@dataclass(frozen=True)
class Part:
    room: str | None


@dataclass(frozen=True)
class NickTo:
    nick: str


@dataclass(frozen=True)
class Msg:
    to: str
    text: str


@dataclass(frozen=True)
class Who:
    room: str | None
    everyone: bool = False


@dataclass(frozen=True)
class Topic:
    """``text`` None asks what the topic is; ``""`` clears it."""

    text: str | None


@dataclass(frozen=True)
class ListRooms:
    after: str | None = None


@dataclass(frozen=True)
class QuitChat:
    reason: str | None


@dataclass(frozen=True)
class Reconnect:
    pass


@dataclass(frozen=True)
class Help:
    pass


@dataclass(frozen=True)
class Invalid:
    """Not a command we can run; ``why`` is one line for the person."""

    why: str


Command = (
    Say | Join | Part | NickTo | Msg | Who | Topic | ListRooms | QuitChat | Reconnect | Help
) | Invalid


def room_name(word: str) -> str:
    """A room as typed: ``#dev`` and ``dev`` are the same room."""
    return word.removeprefix("#")


def parse(line: str) -> Command | None:
    """The command in ``line``; None for a blank line. ``//text`` says ``/text``."""
    if not line.strip():
        return None
    if not line.startswith("/") or line.startswith("//"):
        return Say(line[1:] if line.startswith("//") else line)
    name, _, rest = line.partition(" ")
    rest = rest.strip()
    words = rest.split()
    match name.lower(), words:
        case "/join", [room]:
            return Join(room_name(room))
        case "/part", []:
            return Part(None)
        case "/part", [room]:
            return Part(room_name(room))
        case "/nick", [nick]:
            return NickTo(nick)
        case "/msg", [to, _, *_]:
            return Msg(to, rest.partition(" ")[2].strip())
        case "/me", [_, *_]:
            return Say(rest, action=True)
        case "/topic", []:
            return Topic(None)
        case "/topic", [word] if word == CLEAR_TOPIC:
            return Topic("")
        case "/topic", [_, *_]:
            return Topic(rest)
        case "/list", []:
            return ListRooms()
        case "/list", [after]:
            return ListRooms(room_name(after))
        case "/who", ["*"]:
            return Who(None, everyone=True)
        case "/who", []:
            return Who(None)
        case "/who", [room]:
            return Who(room_name(room))
        case "/quit", _:
            return QuitChat(rest or None)
        case "/help", _:
            return Help()
        case "/reconnect", []:
            return Reconnect()
    known = COMMANDS.get(name.lower())
    if known is not None:
        return Invalid("usage: " + known)
    return Invalid(f"unknown command {name} (try /help)")


ROOM_COMMANDS = ("/join", "/part", "/list", "/who")


def complete(text: str, nicks: Sequence[str], rooms: Sequence[str] = ()) -> list[str]:
    """Every way to finish the last word of ``text``: commands first in the line, rooms after
    a room command or a ``#``, else nicks.

    A nick completed at the start of the line gets ``": "`` (the usual way to address someone).
    """
    head, _, word = text.rpartition(" ")
    prefix = f"{head} " if head else ""
    if not head and word.startswith("/"):
        return [f"{name} " for name in COMMANDS if name.startswith(word.lower())]
    if word.startswith("#") or (head.lower() in ROOM_COMMANDS and rooms and word):
        stem = word.removeprefix("#").casefold()
        found = sorted({r for r in rooms if r.casefold().startswith(stem)}, key=str.casefold)
        return [f"{prefix}#{room} " for room in found]
    if not word:
        return []
    found = sorted({n for n in nicks if n.casefold().startswith(word.casefold())}, key=str.casefold)
    after = ": " if not head else " "
    if head.lower() in ("/msg", "/who"):
        after = " "
    return [f"{prefix}{nick}{after}" for nick in found]
