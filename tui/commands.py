"""The input line's language: ``/command args`` or plain text, parsed without side effects."""

from __future__ import annotations

from dataclasses import dataclass

COMMANDS: dict[str, str] = {
    "/join": "/join ROOM — join a room (or switch to it)",
    "/part": "/part [ROOM] — leave the current room (or ROOM)",
    "/nick": "/nick NAME — change your nick",
    "/msg": "/msg NICK TEXT — a direct message (opens the @NICK view)",
    "/who": "/who [ROOM|*] — who is in this room (or ROOM, or * for everyone online)",
    "/reconnect": "/reconnect — retry now instead of waiting (also Ctrl-R)",
    "/quit": "/quit [REASON] — leave the chat",
    "/help": "/help — this list",
}
HELP_KEYS = (
    "Tab completes nicks and commands · Up/Down walk input history · "
    "Ctrl-N/Ctrl-P next/previous room · Ctrl-R reconnect now · Ctrl-Q or Ctrl-C quits"
)


@dataclass(frozen=True)
class Say:
    text: str


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


Command = Say | Join | Part | NickTo | Msg | Who | QuitChat | Reconnect | Help | Invalid


def parse(line: str) -> Command | None:
    """The command in ``line``; None for a blank line. ``//text`` says ``/text``."""
    if not line.strip():
        return None
    if not line.startswith("/") or line.startswith("//"):
        return Say(line[1:] if line.startswith("//") else line)
    name, _, rest = line.partition(" ")
    rest = rest.strip()
    word, _, tail = rest.partition(" ")
    match name.lower():
        case "/join":
            return Join(word) if word else Invalid("usage: " + COMMANDS["/join"])
        case "/part":
            return Part(word or None)
        case "/nick":
            return NickTo(word) if word else Invalid("usage: " + COMMANDS["/nick"])
        case "/msg":
            if not word or not tail.strip():
                return Invalid("usage: " + COMMANDS["/msg"])
            return Msg(word, tail.strip())
        case "/who":
            return Who(None, everyone=True) if word == "*" else Who(word or None)
        case "/quit":
            return QuitChat(rest or None)
        case "/help":
            return Help()
        case "/reconnect":
            return Reconnect()
    return Invalid(f"unknown command {name} (try /help)")


def complete(text: str, nicks: list[str]) -> list[str]:
    """Every way to finish the last word of ``text``: commands first in the line, else nicks.

    A nick completed at the start of the line gets ``": "`` (the usual way to address someone).
    """
    head, _, word = text.rpartition(" ")
    prefix = f"{head} " if head else ""
    if not head and word.startswith("/"):
        return [f"{name} " for name in COMMANDS if name.startswith(word.lower())]
    if not word:
        return []
    found = sorted({n for n in nicks if n.casefold().startswith(word.casefold())}, key=str.casefold)
    after = ": " if not head else " "
    if head.lower() in ("/msg", "/who"):
        after = " "
    return [f"{prefix}{nick}{after}" for nick in found]
