"""Naming rules: which nicks and rooms are valid, and how case is treated."""

from __future__ import annotations

import pytest

from triochat.protocol import ErrorCode, ProtocolError, rules


@pytest.mark.parametrize(
    "nick",
    ["a", "Ada", "_x", "9lives", "a.b-c_d", "x" * rules.MAX_NICK, "ALL_CAPS", "ünï", "Иван"],
)
def test_valid_nicks_keep_their_case(nick: str) -> None:
    assert rules.check_nick(nick) == nick


@pytest.mark.parametrize(
    "nick",
    [
        "",
        "x" * (rules.MAX_NICK + 1),
        "has space",
        "-dash",
        ".dot",
        "emoji🙂",
        "tab\t",
        "new\nline",
        "a/b",
        "a@b",
    ],
)
def test_invalid_nicks_are_nick_invalid(nick: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        rules.check_nick(nick)
    assert caught.value.code is ErrorCode.NICK_INVALID


def test_nick_identity_is_case_insensitive() -> None:
    assert rules.nick_key("Ada") == rules.nick_key("aDA") == rules.nick_key("ada")
    assert rules.nick_key("ada") != rules.nick_key("ada_")


@pytest.mark.parametrize(
    ("room", "canonical"),
    [
        ("lobby", "lobby"),
        ("Lobby", "lobby"),
        ("DEV-ops.2", "dev-ops.2"),
        ("_x", "_x"),
        ("r" * rules.MAX_ROOM, "r" * rules.MAX_ROOM),
        ("Café", "café"),
    ],
)
def test_valid_rooms_are_lowercased(room: str, canonical: str) -> None:
    assert rules.check_room(room) == canonical


@pytest.mark.parametrize(
    "room", ["", "r" * (rules.MAX_ROOM + 1), "#general", "two words", "-x", ".x", "a/b"]
)
def test_invalid_rooms_are_room_invalid(room: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        rules.check_room(room)
    assert caught.value.code is ErrorCode.ROOM_INVALID


def test_default_room_is_valid_lobby() -> None:
    assert rules.check_room(rules.DEFAULT_ROOM) == "lobby"


def test_a_topic_is_one_line_of_at_most_max_topic_characters() -> None:
    assert rules.check_topic("", 5) == ""
    assert rules.check_topic("é\u200f✓ok", 5) == "é\u200f✓ok"  # bidi marks kept, as in text
    with pytest.raises(ProtocolError) as caught:
        rules.check_topic("x" * 6, 5)
    assert (caught.value.code, caught.value.message) == (
        ErrorCode.BAD_EVENT,
        "a topic is at most 5 characters",
    )


@pytest.mark.parametrize(
    ("topic", "where"),
    [
        ("a\nb", "U+000A at 1"),
        ("\tx", "U+0009 at 0"),
        ("ok\x1b[2J", "U+001B at 2"),
        ("\x85", "U+0085 at 0"),
    ],
)
def test_a_topic_holds_no_control_character(topic: str, where: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        rules.check_topic(topic, 300)
    assert caught.value.code == ErrorCode.BAD_EVENT
    assert caught.value.message == f"a topic may not hold control characters ({where})"
