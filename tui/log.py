"""The message log: a line-API scroll view that lays entries out for its width.

Each :class:`tui.render.Entry` becomes screen lines here: the head, then the body
wrapped in its own column, every later line of the body indented to that column
(wrapped lines blank, the lines after a newline in the text behind a ``┊``
marker). That column is what keeps a multi-line message from drawing something
that looks like a line of its own. Lines are laid out again when the width
changes, so narrowing the terminal re-wraps the whole log.

The log *follows* (stays at the bottom as entries arrive) until the person
scrolls up; then it holds still and counts what arrived below, and scrolling
back to the bottom follows again. Entries can be added above (older history): the
view keeps showing the same lines.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich.console import Console
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from tui.render import Entry

CONTINUED = "┊ "
"""Before each further line of a multi-line message, in the body's column."""
MIN_BODY = 12
"""Narrower than this, the body starts under the head instead of beside it."""
ATTENTION = {"mention": Style(bgcolor="#3b2f00"), "dm": Style(bgcolor="#2a2040")}


def layout(entry: Entry, width: int, console: Console) -> list[Strip]:
    """``entry`` as screen lines of exactly ``width`` cells."""
    if entry.rule:
        label = f" {entry.body.plain} "
        line = Text(label.center(width, "─")[:width], style=entry.body.style)
        return [_strip(line, width, console)]
    head_width = entry.head.cell_len
    beside = width - head_width >= MIN_BODY
    indent = head_width if beside else min(len(CONTINUED), width - 1)
    lines: list[Text] = [] if beside or not head_width else [entry.head.copy()]
    for number, paragraph in enumerate(entry.body.split("\n", allow_blank=True)):
        wrapped = paragraph.wrap(console, max(width - indent, 1)) if paragraph.plain else [Text()]
        for row, piece in enumerate(wrapped):
            if beside and number == 0 and row == 0:
                lead = entry.head.copy()
            elif row == 0 and number > 0:
                lead = Text(CONTINUED.rjust(indent), style="dim")
            else:
                lead = Text(" " * indent)
            line = Text()
            line.append_text(lead)  # each part keeps its own style; neither styles the other
            line.append_text(piece)
            lines.append(line)
    strips = [_strip(line, width, console) for line in lines]
    style = ATTENTION.get(entry.attention)
    return [strip.apply_style(style) for strip in strips] if style else strips


def _strip(line: Text, width: int, console: Console) -> Strip:
    options = console.options.update(width=width, no_wrap=True, overflow="crop")
    segments = list(Segment.split_lines(console.render(line, options)))
    strip = Strip(segments[0] if segments else [])
    return strip.adjust_cell_length(width)


class ChatLog(ScrollView, can_focus=False):
    """The current view's entries; the app replaces, appends and prepends them."""

    class AtTop(Message):
        """The person scrolled to the top: time to fetch older history."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._entries: list[Entry] = []
        self.lines: list[Strip] = []
        """What the log shows, top to bottom, laid out for the current width."""
        self._width = 0
        self._follow = True
        self.unseen = 0
        """Entries that counted and arrived below while the log was scrolled back."""

    @property
    def following(self) -> bool:
        return self._follow

    # --- content ----------------------------------------------------------------

    def show(self, entries: Iterable[Entry]) -> None:
        """Replace everything; the log follows again."""
        self._entries = list(entries)
        self._follow = True
        self._set_unseen(0)
        self._relayout()
        self._pin()

    def append(self, entry: Entry, *, counts: bool = False) -> None:
        self._entries.append(entry)
        if not self._width:
            return
        self.lines.extend(self._laid_out(entry))
        self._resized()
        if self._follow:
            self._pin()
        elif counts:
            self._set_unseen(self.unseen + 1)

    def prepend(self, entries: Sequence[Entry]) -> None:
        """Older entries above the rest; what is on screen stays where it is."""
        self._entries[:0] = entries
        if not self._width:
            return
        added = [strip for entry in entries for strip in self._laid_out(entry)]
        self.lines[:0] = added
        self._resized()
        self.scroll_to(y=self.scroll_y + len(added), animate=False, immediate=True)

    def jump(self, *, end: bool) -> None:
        if end:
            self._follow = True
            self._pin()
        else:
            self.scroll_home(animate=False, immediate=True)

    # --- Textual's side -------------------------------------------------------------

    def on_resize(self) -> None:
        width = self.scrollable_content_region.width
        if width and width != self._width:
            top = self._entry_at(round(self.scroll_y))
            self._relayout()
            if self._follow or top is None:
                self._pin()
            else:
                self.scroll_to(y=self._first_line_of(top), animate=False, immediate=True)

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        self._follow = round(new_value) >= self.max_scroll_y
        if self._follow:
            self._set_unseen(0)
        if round(new_value) == 0 and round(old_value) > 0:
            self.post_message(self.AtTop())

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        index = round(self.scroll_y) + y
        if index >= len(self.lines):
            return Strip.blank(width, self.rich_style)
        return self.lines[index].crop_extend(0, width, self.rich_style)

    # --- bookkeeping -----------------------------------------------------------------

    def _laid_out(self, entry: Entry) -> list[Strip]:
        cached = entry.layout
        if cached is not None and cached[0] == self._width:
            return cached[1]
        strips = layout(entry, self._width, self.app.console)
        entry.layout = (self._width, list(strips))
        return strips

    def _relayout(self) -> None:
        self._width = self.scrollable_content_region.width
        self.lines = [s for entry in self._entries for s in self._laid_out(entry)]
        self._resized()

    def _resized(self) -> None:
        self.virtual_size = Size(self._width, len(self.lines))
        self.refresh()

    def _entry_at(self, line: int) -> Entry | None:
        seen = 0
        for entry in self._entries:
            seen += len(self._laid_out(entry))
            if seen > line:
                return entry
        return None

    def _first_line_of(self, target: Entry) -> int:
        line = 0
        for entry in self._entries:
            if entry is target:
                return line
            line += len(self._laid_out(entry))
        return line

    def _pin(self) -> None:
        """Keep a following log at its newest line: now, and again once the layout is done
        (the first layout knows the height only after this frame). A person who scrolled up
        in between has stopped the following, and is not pulled back."""
        self._to_bottom()
        self.call_after_refresh(self._to_bottom)

    def _to_bottom(self) -> None:
        if self._follow:
            self.scroll_to(y=self.max_scroll_y, animate=False, immediate=True)

    def _set_unseen(self, count: int) -> None:
        self.unseen = count
        plural = "s" if count != 1 else ""
        self.border_subtitle = f"{count} new message{plural} ↓ (Ctrl-End)" if count else ""
