"""Every rule about names and text lives here: what a nick, a room and a message may hold.

Names (nicks and rooms) are made of letters and digits of any one script, plus
``_ - .``; see :func:`name_refusal` for everything refused and why. A name is
shown as its owner typed it, NFKC-normalised (rooms also case-folded, so one
room has one spelling); its *identity* is :func:`name_key`, which makes names
that look alike equal: case variants (``Bob``/``bob``), compatibility forms
(fullwidth ``ada``/``ada``), and TS #39 confusables (``ada`` with a Cyrillic
U+0430 first, ``rn``/``m``, ``I``/``l``, ``0``/``O``). Two nicks online, or two
rooms, never share a key.

Message text keeps the user's characters, except control characters
(:func:`check_text`); a topic is one line of them (:func:`check_topic`).
"""

from __future__ import annotations

import functools
import re
import unicodedata

from triochat.protocol.confusables import DATA_VERSION, prototypes, skeleton
from triochat.protocol.errors import ErrorCode, ProtocolError

MAX_NICK = 32
MAX_ROOM = 64
DEFAULT_ROOM = "lobby"

KEY_VERSION = (
    f"nfkc-casefold-skeleton; confusables {DATA_VERSION}; ucd {unicodedata.unidata_version}"
)
"""What :func:`name_key` depends on. A key stored on disk is valid only under the same
version: the store re-derives its keys when this changes (see store.py)."""

PUNCTUATION = frozenset("_-.")
"""The only non-letters, non-digits a name may hold (never first, except ``_``)."""
MAX_MARKS = 2
"""Combining marks in a row after a letter: enough for every script's vowel signs
and tones once NFKC has composed what it can; more only stacks ink (Zalgo)."""

BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
"""Marks, embeddings, overrides and isolates: they reorder what follows them."""
ZERO_WIDTH = frozenset("\u200b\u200c\u200d\u2060\ufeff")
"""Invisible: ``ada`` and ``a\u200bda`` would look the same."""
_TEXT_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
"""Control characters (category Cc: C0, DEL, C1) but newline and tab, the only two
message text may hold. A regex: text is checked on every ``say``."""
_LINE_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
"""Every control character (category Cc): one-line text (a topic) holds none."""

_UNIFIED_SCRIPTS = {"CJK": "HAN"}
_JOINT_SCRIPTS = (
    frozenset({"HAN", "HIRAGANA", "KATAKANA"}),  # Japanese
    frozenset({"HAN", "HANGUL"}),  # Korean
    frozenset({"HAN", "BOPOMOFO"}),  # Chinese with phonetics
)
"""Scripts written together (TS #39 §5.2, "Highly Restrictive"); any other mix is refused."""


# --- identity ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def name_key(name: str) -> str:
    """The identity of a nick or room name: equal keys look alike.

    NFKC, then repeated until nothing changes: skeleton of the upper case, case
    fold, skeleton, case fold. Both cases go through the skeleton because
    ``I`` is a look-alike of ``l`` *and* the capital of ``i``: folding alone would
    keep ``Ida`` and ``lda`` apart, the skeleton alone ``M`` and ``m``. So ``i``,
    ``I``, ``l`` and ``1`` are one class, and ``m``, ``M`` and ``rn`` another.

    Invariants: ``name_key(x) == name_key(unicodedata.normalize("NFKC", x))`` and
    ``name_key(x) == name_key(x.swapcase())`` for ASCII ``x``. A key is for
    comparing and storing, never for display. Memoised (it is on hot paths: every
    room event's membership check), bounded to the names in use (about 400 bytes an
    entry, so at most ~1.6 MB); a miss costs about 3 µs.
    """
    key = unicodedata.normalize("NFKC", name)
    for _ in range(4):  # a fixed point after one or two rounds in practice
        folded = skeleton(skeleton(key.upper()).casefold()).casefold()
        if folded == key:
            break
        key = folded
    return key


def nick_key(nick: str) -> str:
    """A nick's identity (:func:`name_key`): accounts and the online list key by it."""
    return name_key(nick)


def load_tables() -> None:
    """Read the Unicode data name identity needs, and check it on a known look-alike.

    A server calls this at start-up, so that the tables (the confusables, and
    the pages of Python's Unicode database the rules touch) are part of its base
    memory and not of its first client's, and so that data that cannot tell
    Cyrillic ``\\u0430\\u0441\\u0435`` from ``ace`` stops it before anyone connects.
    """
    prototypes()
    if name_key(check_nick("\u0430\u0441\u0435")) != name_key(check_room("ace")):
        raise RuntimeError("the confusables data does not fold a known look-alike")


def room_key(room: str) -> str:
    """A room's identity (:func:`name_key`): the hub and the store key rooms by it."""
    return name_key(room)


# --- names -------------------------------------------------------------------------------


def check_nick(nick: str) -> str:
    """``nick`` as shown (NFKC-normalised) if it is valid, else ``nick_invalid`` saying why."""
    shown = unicodedata.normalize("NFKC", nick)
    why = name_refusal(nick, shown, MAX_NICK)
    if why is not None:
        raise ProtocolError(ErrorCode.NICK_INVALID, f"a nick {why}")
    return shown


def check_room(room: str) -> str:
    """The canonical name of ``room`` (NFKC, case-folded), else ``room_invalid`` saying why.

    For ASCII names that is the lower case, as room names always were, so rooms
    stored under those names keep their history.
    """
    shown, why = _room_form(room)
    if why is not None:
        raise ProtocolError(ErrorCode.ROOM_INVALID, f"a room name {why}")
    return shown


@functools.lru_cache(maxsize=4096)
def _room_form(room: str) -> tuple[str, str | None]:
    """``room``'s canonical form, and why it is refused (None if it is not).

    Memoised like :func:`name_key`: every ``say`` names its room, and the checks
    cost ~3 µs where a cache hit costs ~0.2."""
    shown = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", room).casefold())
    return shown, name_refusal(room, shown, MAX_ROOM)


def name_refusal(typed: str, shown: str, longest: int) -> str | None:
    """Why a name may not be used (completing "a nick ..."), or None if it may.

    ``typed`` is checked for what deceives or breaks a terminal (controls, ANSI
    escapes, bidi controls, zero-width and other invisible characters, spaces),
    ``shown`` (its NFKC form) for length, the characters allowed, stacked marks,
    and mixed scripts.
    """
    return _invisible(typed) or _shape(shown, longest) or _mixed_scripts(shown)


def _invisible(name: str) -> str | None:
    for char in name:
        if char == "\x1b":
            return "may not hold ANSI escapes (ESC, U+001B)"
        if char in BIDI_CONTROLS:
            return f"may not hold bidirectional controls ({_point(char)}): they reorder text"
        if char in ZERO_WIDTH:
            return f"may not hold zero-width characters ({_point(char)})"
        category = unicodedata.category(char)
        if category == "Cc":
            return f"may not hold control characters ({_point(char)})"
        if category in ("Cf", "Co", "Cs", "Cn"):
            return f"may not hold invisible or unassigned characters ({_point(char)})"
        if category[0] == "Z":
            return "may not hold spaces"
    return None


def _shape(name: str, longest: int) -> str | None:
    if not 1 <= len(name) <= longest:
        return f"has 1 to {longest} characters"
    if not (_is_word(name[0]) or name[0] == "_"):
        return "starts with a letter, a digit or '_'"
    marks = 0
    for char in name:
        if _is_mark(char):
            marks += 1
            if marks > MAX_MARKS:
                return f"may not stack more than {MAX_MARKS} combining marks"
            continue
        marks = 0
        if not (_is_word(char) or char in PUNCTUATION):
            return (
                "uses letters, digits, '_', '-' and '.', and starts with a letter, digit or '_'"
                f" (not {_point(char)})"
            )
    return None


def _mixed_scripts(name: str) -> str | None:
    """Letters of one script only (Latin, Cyrillic, ...; Japanese may mix its three).

    A mixed name (``paypal`` with one Cyrillic U+0430) exists only to pass for
    another; the key stops it colliding with one online, but it would still read
    as someone else in history and to whoever meets it first. Digits, ``_ - .``
    and marks belong to no script. The script is the first word of the letter's
    Unicode name (TS #39 uses the Script property, which Python does not carry).
    """
    scripts = {_script(char) for char in name if unicodedata.category(char)[0] == "L"}
    if len(scripts) <= 1 or any(scripts <= joint for joint in _JOINT_SCRIPTS):
        return None
    return f"is written in one script, not {' and '.join(sorted(scripts))}"


def _script(letter: str) -> str:
    word = unicodedata.name(letter, "UNKNOWN").split(" ", 1)[0]
    return _UNIFIED_SCRIPTS.get(word, word)


def _is_word(char: str) -> bool:
    return unicodedata.category(char) in ("Lu", "Ll", "Lt", "Lm", "Lo", "Nd")


def _is_mark(char: str) -> bool:
    return unicodedata.category(char) in ("Mn", "Mc")


def _point(char: str) -> str:
    return f"U+{ord(char):04X}"


# --- text --------------------------------------------------------------------------------


def check_text(text: str, longest: int) -> str:
    """``text`` (of ``say``, ``dm``) unchanged if valid, else ``bad_event`` saying why.

    Refused rather than replaced: the sender learns at once, and what anyone
    reads is exactly what was sent. Control characters other than newline and
    tab (C0, DEL, C1: ESC and so ANSI escapes, CR, NUL, ...) are refused; every
    other character, bidi marks included (right-to-left writers need them), is kept.
    """
    if not text:
        raise ProtocolError(ErrorCode.BAD_EVENT, "text is empty")
    if len(text) > longest:
        raise ProtocolError(ErrorCode.BAD_EVENT, f"text longer than {longest} characters")
    _refuse_controls("text", text, _TEXT_CONTROL, " other than newline and tab")
    return text


def check_topic(text: str, longest: int) -> str:
    """A topic's ``text`` unchanged if valid, else ``bad_event`` saying why.

    A topic is one line of 0 (none: the topic is cleared) to ``longest``
    characters, under the rules of :func:`check_text` but for newline and tab,
    which it may not hold either.
    """
    if len(text) > longest:
        raise ProtocolError(ErrorCode.BAD_EVENT, f"a topic is at most {longest} characters")
    _refuse_controls("a topic", text, _LINE_CONTROL, "")
    return text


def _refuse_controls(what: str, text: str, controls: re.Pattern[str], but: str) -> None:
    """``bad_event`` naming the first of ``controls`` in ``text``, and where it is."""
    control = controls.search(text)
    if control is not None:
        raise ProtocolError(
            ErrorCode.BAD_EVENT,
            f"{what} may not hold control characters{but}"
            f" ({_point(control[0])} at {control.start()})",
        )
