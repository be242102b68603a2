"""The pure parts: commands, completion, rendering, backoff."""

from __future__ import annotations

import random

import pytest

from tui import commands as cmd
from tui.link import Backoff
from tui.render import Renderer, literal, nick_colour


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("hello", cmd.Say("hello")),
        ("//slash", cmd.Say("/slash")),
        ("   ", None),
        ("/join dev", cmd.Join("dev")),
        ("/join", cmd.Invalid("usage: " + cmd.COMMANDS["/join"])),
        ("/part", cmd.Part(None)),
        ("/nick  zed", cmd.NickTo("zed")),
        ("/msg bob hi there", cmd.Msg("bob", "hi there")),
        ("/msg bob", cmd.Invalid("usage: " + cmd.COMMANDS["/msg"])),
        ("/who", cmd.Who(None)),
        ("/who *", cmd.Who(None, everyone=True)),
        ("/quit bye now", cmd.QuitChat("bye now")),
        ("/HELP", cmd.Help()),
        ("/reconnect", cmd.Reconnect()),
        ("/dance", cmd.Invalid("unknown command /dance (try /help)")),
    ],
)
def test_parse(line: str, expected: cmd.Command | None) -> None:
    assert cmd.parse(line) == expected


def test_complete() -> None:
    nicks = ["bob", "Bobby", "carol"]
    assert cmd.complete("/j", nicks) == ["/join "]
    assert cmd.complete("bo", nicks) == ["bob: ", "Bobby: "]
    assert cmd.complete("hi c", nicks) == ["hi carol "]
    assert cmd.complete("/msg ca", nicks) == ["/msg carol "]
    assert cmd.complete("", nicks) == []
    assert cmd.complete("zz", nicks) == []


def test_literal_makes_control_characters_visible() -> None:
    assert literal("plain [bold]") == "plain [bold]"
    assert literal("a\x1b[31mb") == "a\\x1b[31mb"
    assert literal("rtl\u202eevil") == "rtl\\u202eevil"
    assert literal("two\nlines\tok") == "two\nlines\tok"
    assert literal("\x9b") == "\\x9b"  # the 8-bit CSI


def test_markup_in_a_message_stays_text() -> None:
    entry = Renderer(timefmt=lambda ts: "12:00").said(0, "bob", "[red]x[/red]", mine=False)
    assert entry.plain == "12:00 bob: [red]x[/red]"
    line = entry.body
    assert all(
        "red" not in str(span.style)
        for span in line.spans
        if "x" in line.plain[span.start : span.end]
    )


def test_nick_colours_are_stable_and_case_blind() -> None:
    assert nick_colour("Bob") == nick_colour("bob") == "#7ec699"  # pinned: same every run
    assert nick_colour("ada") != nick_colour("bob")


def test_backoff_grows_jittered_and_capped() -> None:
    backoff = Backoff(base=0.5, cap=8.0)
    rng = random.Random(4)
    for attempt, ceiling in [
        (0, 0.5),
        (1, 1.0),
        (2, 2.0),
        (3, 4.0),
        (4, 8.0),
        (10, 8.0),
        (99, 8.0),
    ]:
        delays = {backoff.delay(attempt, rng) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 40  # jittered: clients do not retry in step
