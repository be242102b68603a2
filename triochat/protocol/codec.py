"""Encode and decode single events: bytes of one line in, typed event out.

Encoding produces the line *with* its trailing newline, so a fan-out can
concatenate already-encoded events into one write without touching them again.

Decoding refuses JSON nested deeper than :data:`MAX_DEPTH` as ``bad_json``
before msgspec sees it: msgspec recurses once per level (even to skip an
unknown field), and a line of a few KB can otherwise exhaust the interpreter's
recursion limit.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

import msgspec

from triochat.protocol.errors import ErrorCode, ProtocolError
from triochat.protocol.events import ClientEvent, HistoryPage, ServerEvent

_encoder = msgspec.json.Encoder()
_client_decoder: msgspec.json.Decoder[ClientEvent] = msgspec.json.Decoder(ClientEvent)
_server_decoder: msgspec.json.Decoder[ServerEvent] = msgspec.json.Decoder(ServerEvent)
T = TypeVar("T")

MAX_DEPTH = 32
"""The deepest nesting of arrays and objects a line may have (a client event needs 3)."""
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))


def encode(event: Any) -> bytes:
    """One event as one NDJSON line, newline included."""
    return _encoder.encode(event) + b"\n"


def encode_history(room: str, lines: Iterable[bytes]) -> bytes:
    """A ``history`` event built from room events that are already encoded.

    History is stored as the exact lines that were fanned out, so replaying it
    costs a join of bytes, not a re-encode of every event.
    """
    raws = [msgspec.Raw(line.rstrip(b"\n")) for line in lines]
    return encode(HistoryPage(room=room, events=raws))  # type: ignore[arg-type]


def decode_client(line: bytes | str) -> ClientEvent:
    """Parse one line a client sent; :class:`ProtocolError` says what was wrong."""
    return _decode(_client_decoder, line)


def decode_server(line: bytes | str) -> ServerEvent:
    """Parse one line a server sent."""
    return _decode(_server_decoder, line)


def _decode(decoder: msgspec.json.Decoder[T], line: bytes | str) -> T:
    # Most lines are one flat object: no "[" and no "{" after the first byte. Both
    # tests are single C calls (an int operand of `in` is a memchr); others go on.
    if type(line) is not bytes or 0x5B in line or line.rfind(0x7B) > 0:  # "[", "{"
        _check_depth(line)
    try:
        return decoder.decode(line)
    except msgspec.ValidationError as exc:
        raise ProtocolError(ErrorCode.BAD_EVENT, str(exc)) from None
    except msgspec.DecodeError as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, f"not valid JSON: {exc}") from None
    except UnicodeError:  # invalid UTF-8 bytes, or a str with lone surrogates
        raise ProtocolError(ErrorCode.BAD_JSON, "not valid UTF-8") from None


def _check_depth(line: bytes | str) -> None:
    """``bad_json`` if brackets outside strings nest deeper than :data:`MAX_DEPTH`.

    Linear and C-level: escapes are removed so every remaining quote delimits a
    string, strings are dropped, and each pass removes every innermost ``[]``
    pair; brackets left after MAX_DEPTH passes nest too deep (or do not pair
    up, which is not JSON either).
    """
    if isinstance(line, str):
        line = line.encode("utf-8", "surrogatepass")
    if line.count(b"[") + line.count(b"{") <= MAX_DEPTH:
        return
    unescaped = line.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(unescaped.split(b'"')[::2])
    brackets = outside.translate(_BRACKETS, _NOT_BRACKETS)
    for _ in range(MAX_DEPTH):
        brackets = brackets.replace(b"[]", b"")
    if brackets:
        raise ProtocolError(ErrorCode.BAD_JSON, f"nested deeper than {MAX_DEPTH} levels")
