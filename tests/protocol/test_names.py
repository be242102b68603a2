"""Names that cannot impersonate, and message text without control characters.

The rules (triochat/protocol/rules.py) as pure functions: the identity key
(NFKC, case folding, TS #39 skeleton), what names refuse, what text refuses.
"""

from __future__ import annotations

import string
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from triochat.protocol import ErrorCode, ProtocolError, rules
from triochat.protocol.confusables import prototypes, skeleton

CYRILLIC_A = "\u0430"
ACCESS_IN_CYRILLIC = "\u0430\u0441\u0441\u0435\u0455\u0455"
"""``access`` spelt wholly in Cyrillic letters (а с с е ѕ ѕ): one script, so a valid
name, and the look-alike of ``access`` that only the key catches."""


def _code(call: object, name: str) -> tuple[ErrorCode, str]:
    assert callable(call)
    with pytest.raises(ProtocolError) as caught:
        call(name)
    return caught.value.code, caught.value.message


# --- the key -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (CYRILLIC_A + "da", "ada"),  # the case: a Cyrillic a
        (ACCESS_IN_CYRILLIC, "access"),
        ("rn", "m"),
        ("modern", "rnodern"),
        ("I", "l"),
        ("Ida", "lda"),
        ("1", "l"),
        ("0", "O"),
        ("b0b", "bob"),
        ("Ada", "aDA"),
        ("ADA", "ada"),
        ("\uff41\uff44\uff41", "ada"),  # fullwidth: NFKC
        ("Straße", "STRASSE"),
    ],
)
def test_look_alikes_share_a_key(one: str, other: str) -> None:
    assert rules.nick_key(one) == rules.nick_key(other)
    assert rules.room_key(one) == rules.room_key(other)


@pytest.mark.parametrize(("one", "other"), [("ada", "ada_"), ("ada", "adb"), ("bob", "rob")])
def test_different_names_keep_different_keys(one: str, other: str) -> None:
    assert rules.nick_key(one) != rules.nick_key(other)


ascii_names = st.text(alphabet=string.ascii_letters + string.digits + "_-.", max_size=32)


@given(ascii_names)
def test_the_key_of_an_ascii_name_ignores_case(name: str) -> None:
    assert rules.name_key(name) == rules.name_key(name.swapcase())


@given(st.text(max_size=40))
def test_the_key_is_the_key_of_the_nfkc_form(name: str) -> None:
    assert rules.name_key(name) == rules.name_key(unicodedata.normalize("NFKC", name))


def test_the_skeleton_table_is_ts39_and_idempotent() -> None:
    table = prototypes()
    assert table[CYRILLIC_A] == "a"
    assert table["m"] == "rn"
    assert not [c for c, target in table.items() if any(t in table for t in target)]
    assert skeleton("m") == "rn"


# --- what names refuse -------------------------------------------------------------------

REFUSED = {
    "bidi override": ("\u202e", "bidirectional"),
    "bidi embedding": ("\u202a", "bidirectional"),
    "bidi isolate": ("\u2066", "bidirectional"),
    "left-to-right mark": ("\u200e", "bidirectional"),
    "right-to-left mark": ("\u200f", "bidirectional"),
    "arabic letter mark": ("\u061c", "bidirectional"),
    "zero-width joiner": ("\u200d", "zero-width"),
    "zero-width space": ("\u200b", "zero-width"),
    "word joiner": ("\u2060", "zero-width"),
    "byte order mark": ("\ufeff", "zero-width"),
    "ANSI escape": ("\x1b[31m", "ANSI escapes"),
    "NUL": ("\x00", "control characters"),
    "newline": ("\n", "control characters"),
    "DEL": ("\x7f", "control characters"),
    "C1 control": ("\x9b", "control characters"),
    "soft hyphen": ("\u00ad", "invisible"),
    "tag character": ("\U000e0041", "invisible"),
    "no-break space": ("\u00a0", "spaces"),
    "space": (" ", "spaces"),
}


@pytest.mark.parametrize("case", REFUSED)
@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_deceiving_characters_are_refused_in_nicks_and_rooms(case: str, where: str) -> None:
    char, says = REFUSED[case]
    name = {"start": char + "ada", "middle": "ad" + char + "a", "end": "ada" + char}[where]
    code, message = _code(rules.check_nick, name)
    assert code is ErrorCode.NICK_INVALID
    assert message.startswith("a nick ")
    assert says in message
    code, message = _code(rules.check_room, name)
    assert code is ErrorCode.ROOM_INVALID
    assert says in message


invisible = st.sampled_from(
    sorted(rules.BIDI_CONTROLS | rules.ZERO_WIDTH | {"\x1b", "\x00", "\x7f", "\x85", "\u00ad"})
)


@given(st.text(alphabet=string.ascii_letters, max_size=10), invisible, st.text(max_size=10))
def test_an_invisible_or_control_character_is_refused_wherever_it_is(
    before: str, char: str, after: str
) -> None:
    for check, code in (
        (rules.check_nick, ErrorCode.NICK_INVALID),
        (rules.check_room, ErrorCode.ROOM_INVALID),
    ):
        with pytest.raises(ProtocolError) as caught:
            check(before + char + after)
        assert caught.value.code is code


@pytest.mark.parametrize(
    "name",
    [
        "p" + CYRILLIC_A + "ypal",  # Latin with one Cyrillic letter
        CYRILLIC_A + "da",
        "\u03b1lpha",  # a Greek alpha among Latin
    ],
)
def test_mixed_scripts_are_refused(name: str) -> None:
    code, message = _code(rules.check_nick, name)
    assert code is ErrorCode.NICK_INVALID
    assert "one script" in message


@pytest.mark.parametrize(
    "name", ["\u65e5\u672c\u8a9e\u3072\u3089\u304c\u306a", "\ud55c\uad6d", "Иван_2", "ümit"]
)
def test_one_script_or_japanese_are_admitted(name: str) -> None:
    assert rules.check_nick(name) == name


def test_stacked_marks_are_refused() -> None:
    assert rules.check_nick("e\u0301\u0302")  # NFKC composes one; two stacked are fine
    code, message = _code(rules.check_nick, "x\u0301\u0302\u0303")
    assert code is ErrorCode.NICK_INVALID
    assert "combining marks" in message


def test_display_is_nfkc_and_identity_is_the_key() -> None:
    assert rules.check_nick("\uff21da") == "Ada"  # fullwidth A: shown as typed, NFKC
    assert rules.check_room("\uff21DA") == "ada"
    assert rules.check_nick("ADA") == "ADA"


def test_ascii_rooms_keep_their_lowercase_names() -> None:
    """Rooms stored before keys existed were stored under the lowercase name."""
    for name in ("lobby", "Dev-Ops.2", "_x"):
        assert rules.check_room(name) == name.lower()


# --- message text --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["hi", "two\nlines", "tab\there", "\u05e9\u05dc\u05d5\u05dd \u200f!", "é🙂", "a\u202eb"]
)
def test_text_keeps_the_users_characters(text: str) -> None:
    assert rules.check_text(text, 8000) is text


@pytest.mark.parametrize("text", ["\x1b[31mred", "cr\r\n", "nul\x00", "del\x7f", "c1\x9b"])
def test_text_refuses_control_characters_but_newline_and_tab(text: str) -> None:
    code, message = _code(lambda t: rules.check_text(t, 8000), text)
    assert code is ErrorCode.BAD_EVENT
    assert "control characters other than newline and tab" in message


@given(st.text(max_size=20), st.characters(categories=["Cc"]), st.text(max_size=20))
def test_any_control_character_in_text_is_refused_unless_newline_or_tab(
    before: str, char: str, after: str
) -> None:
    text = before + char + after
    controls = [c for c in text if unicodedata.category(c) == "Cc" and c not in "\n\t"]
    if controls:
        with pytest.raises(ProtocolError):
            rules.check_text(text, 8000)
    else:
        assert rules.check_text(text, 8000) == text
