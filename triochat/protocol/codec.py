"""Encode and decode single events: bytes of one line in, typed event out.

Encoding produces the line *with* its trailing newline, so a fan-out can
concatenate already-encoded events into one write without touching them again.
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
    try:
        return decoder.decode(line)
    except msgspec.ValidationError as exc:
        raise ProtocolError(ErrorCode.BAD_EVENT, str(exc)) from None
    except msgspec.DecodeError as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, f"not valid JSON: {exc}") from None
    except UnicodeError:  # invalid UTF-8 bytes, or a str with lone surrogates
        raise ProtocolError(ErrorCode.BAD_JSON, "not valid UTF-8") from None
