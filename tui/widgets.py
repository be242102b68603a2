"""The chat screen's parts. Each widget owns its look; the app owns the state."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from triochat.protocol import ProtocolError, rules
from tui.commands import complete
from tui.render import literal, nick_colour

HISTORY_SIZE = 200


@dataclass(frozen=True)
class Tab:
    """A view as the room list shows it."""

    name: str
    unread: int = 0
    """Messages not seen yet."""
    attention: int = 0
    """Of those, the ones that mention us, or direct messages."""

    @property
    def label(self) -> Text:
        label = Text(literal(self.name if self.name.startswith("@") else f"#{self.name}"))
        if self.attention:
            label.append(f" ({self.unread})", style="bold reverse magenta")
        elif self.unread:
            label.append(f" ({self.unread})", style="yellow")
        return label


class RoomList(OptionList):
    """Rooms and DM views, each with its unread count; picking one switches to it."""

    class Picked(Message):
        def __init__(self, view: str) -> None:
            super().__init__()
            self.view = view

    def show(self, tabs: list[Tab], current: str | None) -> None:
        self.clear_options()
        self.add_options([Option(tab.label, id=tab.name) for tab in tabs])
        names = [tab.name for tab in tabs]
        if current in names:
            self.highlighted = names.index(current)

    @on(OptionList.OptionSelected)
    def _picked(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id is not None:
            self.post_message(self.Picked(event.option.id))


class RoomBar(Static):
    """The room list folded into one line, for narrow terminals: the current view first."""

    def show(self, tabs: list[Tab], current: str | None) -> None:
        line = Text(no_wrap=True, overflow="ellipsis")
        ordered = sorted(tabs, key=lambda tab: tab.name != current)
        for tab in ordered:
            label = tab.label
            if tab.name == current:
                label.stylize("bold reverse")
            line.append_text(label)
            line.append(" ")
        self.update(line)


class MemberList(Static):
    """The nicks of the current room, each in its own colour."""

    def show(self, nicks: list[str], me: str | None) -> None:
        lines = Text()
        for nick in sorted(nicks, key=str.casefold):
            style = f"bold {nick_colour(nick)}" if nick == me else nick_colour(nick)
            lines.append(literal(nick), style=style)
            lines.append("\n")
        self.update(lines)


class StatusBar(Static):
    """Connection state, server address, our nick and the round-trip time."""

    def show(self, state: str, address: str, nick: str | None, rtt: str, detail: str) -> None:
        marks = {"connected": ("●", "green"), "connecting": ("◌", "yellow")}
        mark, colour = marks.get(state, ("○", "red"))
        line = Text.assemble((f"{mark} {state}", f"bold {colour}"), "  ", address)
        if nick:
            line.append(f"  as {literal(nick)}")
        if rtt:
            line.append(f"  rtt {rtt}")
        if detail:
            line.append(f"  {literal(detail)}", style="dim")
        self.update(line)


class ChatInput(Input):
    """The input line: Tab completes commands, rooms and nicks, Up/Down walk what was typed."""

    BINDINGS = [  # noqa: RUF012 (Textual's convention)
        Binding("tab", "complete", "complete", show=False, priority=True),
        Binding("up", "history(-1)", "older", show=False),
        Binding("down", "history(1)", "newer", show=False),
    ]

    def __init__(
        self, nicks: Callable[[], list[str]], rooms: Callable[[], list[str]], **kwargs: str
    ) -> None:
        # No select-on-focus: a key typed elsewhere is moved here, and must not be replaced.
        super().__init__(select_on_focus=False, **kwargs)  # type: ignore[arg-type]
        self._nicks = nicks
        self._rooms = rooms
        self._history: list[str] = []
        self._position = 0
        self._choices: list[str] = []
        self._choice = -1

    def remember(self, line: str) -> None:
        if line and (not self._history or self._history[-1] != line):
            self._history.append(line)
            del self._history[:-HISTORY_SIZE]
        self._position = len(self._history)

    def action_history(self, step: int) -> None:
        position = min(max(self._position + step, 0), len(self._history))
        if position == self._position:
            return
        self._position = position
        self.value = self._history[position] if position < len(self._history) else ""
        self.cursor_position = len(self.value)

    def action_complete(self) -> None:
        if not (
            0 <= self._choice < len(self._choices) and self._choices[self._choice] == self.value
        ):
            self._choices = complete(self.value, self._nicks(), self._rooms())
            self._choice = -1
        if not self._choices:
            self.app.bell()
            return
        self._choice = (self._choice + 1) % len(self._choices)
        self.value = self._choices[self._choice]
        self.cursor_position = len(self.value)


class PasswordScreen(ModalScreen[str | None]):
    """Asks for the password of a registered nick, masked. Escape: pick another nick (None)."""

    AUTO_FOCUS = "#password-input"
    BINDINGS = [Binding("escape", "other_nick", "another nick")]  # noqa: RUF012

    def __init__(self, nick: str, reason: str) -> None:
        super().__init__()
        self._nick = nick
        self._reason = reason

    def compose(self) -> ComposeResult:
        with Vertical(id="nick-box"):
            yield Label(Text(literal(f"Password for {self._nick}")), id="nick-title")
            yield Label(Text(literal(self._reason)), id="password-reason")
            yield Input(password=True, placeholder="password", id="password-input")
            yield Label("Enter: log in · Escape: another nick · Ctrl-Q: quit", id="nick-help")

    @on(Input.Submitted, "#password-input")
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.value:
            self.dismiss(event.value)

    def action_other_nick(self) -> None:
        self.dismiss(None)


class NickScreen(ModalScreen[str]):
    """Asks for a nick; shows why the last one was refused. Dismissed with a valid nick."""

    AUTO_FOCUS = "#nick-input"

    def __init__(self, reason: str | None = None, suggestion: str = "") -> None:
        super().__init__()
        self._reason = reason
        self._suggestion = suggestion

    def compose(self) -> ComposeResult:
        with Vertical(id="nick-box"):
            yield Label("Choose a nick", id="nick-title")
            yield Label(Text(literal(self._reason or "")), id="nick-reason")
            yield Input(value=self._suggestion, placeholder="your nick", id="nick-input")
            yield Label(
                "letters, digits, _ - . · Enter: connect · Ctrl-Q: quit\n"
                "Once in: /help or F1 lists every command and key.",
                id="nick-help",
            )

    def on_mount(self) -> None:
        self.query_one("#nick-reason", Label).display = bool(self._reason)
        box = self.query_one("#nick-input", Input)
        box.cursor_position = len(box.value)

    @on(Input.Submitted, "#nick-input")
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        nick = event.value.strip()
        try:
            rules.check_nick(nick)
        except ProtocolError as exc:
            reason = self.query_one("#nick-reason", Label)
            reason.update(Text(exc.message))
            reason.display = True
            return
        self.dismiss(nick)
