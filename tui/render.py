"""Turning events into log entries, with other people's text shown literally.

Everything a peer controls (nicks, room names, message text) goes into
:class:`rich.text.Text` as plain strings, never through markup, so ``[bold]``
stays ``[bold]``. Control characters are replaced by visible escapes before that,
so an ``ESC`` sequence or a bidi override cannot restyle the terminal or reorder
the line: :func:`literal` is the one gate.

An :class:`Entry` is a *head* (time and who) and a *body*. The log lays the body
out beside the head and never under it: wrapped lines and the further lines of a
multi-line message start in the body's column, the latter behind a marker
(:mod:`tui.log`). So no text can begin a screen line the way a message does, and
``"\\nAda: hi"`` inside a message cannot pass for a line from Ada.
"""

from __future__ import annotations

import re
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from rich.text import Text

from triochat.protocol.events import DirectMessage, Joined, Left, Message, RoomEvent, Topic

if TYPE_CHECKING:
    from textual.strip import Strip

TimeFormat = Callable[[float], str]
Attention = Literal["", "mention", "dm"]

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


@dataclass(eq=False)
class Entry:
    """One thing in a view's log. ``seq`` is the room event's, when it is one."""

    head: Text
    body: Text
    seq: int | None = None
    attention: Attention = ""
    """Set for a line that mentions us (``mention``) or a direct message (``dm``)."""
    rule: bool = False
    """A separator across the log (``body`` is its label), not a line of text."""
    layout: tuple[int, list[Strip]] | None = field(default=None, repr=False, compare=False)
    """The log's cache of this entry's screen lines for one width (tui.log)."""

    @property
    def plain(self) -> str:
        return self.head.plain + self.body.plain


class Mentions:
    """Whether a text mentions us: our nick or a highlight word, as a whole word, any case."""

    def __init__(self, words: Iterable[str] = ()) -> None:
        self._words = [w for w in words if w.strip()]
        self._pattern: re.Pattern[str] | None = None
        self.nick("")

    def nick(self, nick: str) -> None:
        """Our nick changed (or is first known)."""
        words = [w for w in [nick, *self._words] if w]
        alternatives = "|".join(re.escape(w) for w in words)
        self._pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.I) if words else None

    def __call__(self, text: str) -> bool:
        return self._pattern is not None and self._pattern.search(text) is not None


@dataclass(frozen=True)
class Renderer:
    """Builds log entries; ``me`` is our nick (own messages are set apart)."""

    timefmt: TimeFormat = clock
    mentions: Mentions = field(default_factory=Mentions)

    def stamp(self, ts: float) -> Text:
        return Text.assemble((self.timefmt(ts), "dim"), " ")  # a span: the nick after it is not dim

    def room_event(self, event: RoomEvent, me: str) -> Entry:
        match event:
            case Message():
                entry = self.said(
                    event.ts, event.from_, event.text, mine=event.from_ == me, action=event.action
                )
            case Joined():
                entry = self.notice(event.ts, f"→ {literal(event.nick)} joined {event.room}")
            case Left():
                why = _LEFT_REASONS.get(str(event.reason), str(event.reason))
                entry = self.notice(event.ts, f"← {literal(event.nick)} {why}")
            case Topic():
                entry = self.topic(event.ts, event.from_, event.text)
        entry.seq = event.seq
        return entry

    def dm(self, event: DirectMessage, me: str) -> Entry:
        entry = self.said(
            event.ts, event.from_, event.text, mine=event.from_ == me, action=event.action
        )
        if event.from_ != me:
            entry.attention = "dm"
        return entry

    def said(self, ts: float, nick: str, text: str, *, mine: bool, action: bool = False) -> Entry:
        head = self.stamp(ts)
        colour = nick_colour(nick)
        if action:
            head.append(f"* {literal(nick)}", style=f"bold {colour}")
        elif mine:
            head.append(f"{literal(nick)} ▸", style=f"bold reverse {colour}")
        else:
            head.append(f"{literal(nick)}:", style=f"bold {colour}")
        head.append(" ")
        body = Text(literal(text), style="italic" if mine or action else "")
        mention = not mine and self.mentions(text)
        return Entry(head, body, attention="mention" if mention else "")

    def notice(self, ts: float | None, text: str) -> Entry:
        """A dimmed line: joins, leaves, nick changes, connection news."""
        head = self.stamp(ts) if ts is not None else Text("")
        return Entry(head, Text(text, style="dim italic"))

    def topic(self, ts: float, nick: str, text: str) -> Entry:
        said = f"set the topic: {literal(text)}" if text else "cleared the topic"
        return self.notice(ts, f"✎ {literal(nick)} {said}")

    def problem(self, text: str) -> Entry:
        return Entry(Text("! ", style="bold red"), Text(literal(text), style="bold red"))

    def info(self, text: str) -> Entry:
        return Entry(Text(""), Text(literal(text), style="cyan"))

    def separator(self, label: str) -> Entry:
        return Entry(Text(""), Text(label, style="bold yellow"), rule=True)
