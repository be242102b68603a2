"""The wire contract, sans-IO: events, codec, framing and naming rules.

Nothing here does I/O or imports trio; servers, clients and tests all speak
through these functions. Event structs live in :mod:`triochat.protocol.events`.
"""

from __future__ import annotations

from triochat.protocol.codec import decode_client, decode_server, encode, encode_history
from triochat.protocol.errors import ErrorCode, ProtocolError
from triochat.protocol.framing import LineSplitter, split_message

__all__ = [
    "ErrorCode",
    "LineSplitter",
    "ProtocolError",
    "decode_client",
    "decode_server",
    "encode",
    "encode_history",
    "split_message",
]
