"""Turning events into screen lines, with other people's text shown literally.

Everything a peer controls (nicks, room names, message text) goes into
:class:`rich.text.Text` as plain strings, never through markup, so ``[bold]``
stays ``[bold]``. Control characters are replaced by visible escapes before that,
so an ``ESC`` sequence or a bidi override cannot restyle the terminal or reorder
the line: :func:`literal` is the one gate.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from rich.text import Text

from triochat.protocol.events import DirectMessage, Joined, Left, Message, RoomEvent, Topic

TimeFormat = Callable[[float], str]

NICK_COLOURS = (
    "#e06c75",
    "#98c379",
    "#e5c07b",
    "#61afef",
    "#c678dd",
    "#56b6c2",
    "#d19a66",
    "#be5046",
    "#7ec699",
    "#f0a0c0",
    "#a0a0ff",
    "#c0c070",
)
_BIDI = {0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}
_LEFT_REASONS = {
    "part": "left",
    "quit": "quit",
    "timeout": "timed out",
    "disconnected": "disconnected",
    "slow_consumer": "was dropped (too slow)",
    "shutdown": "left (server shutdown)",
}


def clock(ts: float) -> str:
    """Local ``HH:MM`` for a server timestamp."""
    return time.strftime("%H:%M", time.localtime(ts))


def literal(text: str) -> str:
    """``text`` with every control character made visible (``\\x1b``), newlines and tabs kept."""
    if text.isprintable():
        return text
    return "".join(_visible(ch) for ch in text)


def _visible(ch: str) -> str:
    code = ord(ch)
    if ch in "\n\t" or (ch.isprintable() and code not in _BIDI):
        return ch
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def nick_colour(nick: str) -> str:
    """The same colour for a nick on every screen and every run (not ``hash()``: it is salted)."""
    return NICK_COLOURS[zlib.crc32(nick.casefold().encode()) % len(NICK_COLOURS)]


@dataclass(frozen=True)
class Renderer:
    """Builds log lines; ``me`` is our nick (own messages are set apart)."""

    timefmt: TimeFormat = clock

    def stamp(self, ts: float) -> Text:
        return Text(self.timefmt(ts) + " ", style="dim")

    def room_event(self, event: RoomEvent, me: str) -> Text:
        match event:
            case Message():
                return self.said(event.ts, event.from_, event.text, mine=event.from_ == me)
            case Joined():
                return self.notice(event.ts, f"→ {literal(event.nick)} joined {event.room}")
            case Left():
                why = _LEFT_REASONS.get(str(event.reason), str(event.reason))
                return self.notice(event.ts, f"← {literal(event.nick)} {why}")
            case Topic(text=""):
                return self.notice(event.ts, f"{literal(event.from_)} cleared the topic")
            case Topic():
                return self.notice(
                    event.ts, f"{literal(event.from_)} set the topic: {literal(event.text)}"
                )

    def dm(self, event: DirectMessage, me: str) -> Text:
        return self.said(event.ts, event.from_, event.text, mine=event.from_ == me)

    def said(self, ts: float, nick: str, text: str, *, mine: bool) -> Text:
        line = self.stamp(ts)
        if mine:
            line.append(f"{literal(nick)} ▸", style=f"bold reverse {nick_colour(nick)}")
            line.append(" ")
            line.append(literal(text), style="italic")
        else:
            line.append(f"{literal(nick)}:", style=f"bold {nick_colour(nick)}")
            line.append(" ")
            line.append(literal(text))
        return line

    def notice(self, ts: float | None, text: str) -> Text:
        """A dimmed line: joins, leaves, nick changes, connection news."""
        line = self.stamp(ts) if ts is not None else Text("")
        line.append(text, style="dim italic")
        return line

    def problem(self, text: str) -> Text:
        return Text(f"! {literal(text)}", style="bold red")

    def info(self, text: str) -> Text:
        return Text(literal(text), style="cyan")
