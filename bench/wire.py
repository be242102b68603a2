"""The bytes the load generator sends and the patterns it looks for, without a protocol library.

Everything here is built so the receiving side never decodes an event:

* every delivery of a broadcast is one line containing :data:`MESSAGE`
  (both servers encode JSON compactly, so the pattern is exact);
* the text of every broadcast starts with ``B<sender>:<send time ns>:``, so a
  sender recognises its own echo by :func:`echo_marker` and a sampled
  receiver reads the send time with :data:`SENT_AT`;
* WebSocket frames from a server are unmasked and never fragmented by either
  server, so frame headers sit *between* lines and never split a pattern.

Client frames are masked, as RFC 6455 requires, with a random key per
connection.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re

MESSAGE = b'"type":"message"'
WELCOME = b'"type":"welcome"'
ERROR = b'"type":"error"'
SENT_AT = re.compile(rb'"text":"B\d{5}:(\d{19}):')
TEXT_BYTES = 100
"""Length of every broadcast's text: the performance targets are set for 100-byte messages."""

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_PREFIX = len(b"B00000:0000000000000000000:")
_PAD = b"x" * (TEXT_BYTES - _PREFIX)


def upgrade_request(host: str, port: int) -> tuple[bytes, bytes]:
    """An HTTP/1.1 WebSocket upgrade request and the ``Sec-WebSocket-Accept`` it must get."""
    key = base64.b64encode(os.urandom(16))
    request = (
        b"GET / HTTP/1.1\r\n"
        b"Host: %s:%d\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    ) % (host.encode(), port, key)
    accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())
    return request, accept


def upgrade_accepted(head: bytes, accept: bytes) -> bool:
    """Whether a response head (up to the blank line) completes the upgrade."""
    status, _, fields = head.partition(b"\r\n")
    if not status.startswith(b"HTTP/1.1 101"):
        return False
    for field in fields.split(b"\r\n"):
        name, _, value = field.partition(b":")
        if name.strip().lower() == b"sec-websocket-accept":
            return value.strip() == accept
    return False


def text_frame(payload: bytes, mask: bytes) -> bytes:
    """One masked, final WebSocket text frame carrying ``payload``."""
    size = len(payload)
    if size < 126:
        head = bytes((0x81, 0x80 | size))
    elif size < 1 << 16:
        head = bytes((0x81, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x81, 0x80 | 127)) + size.to_bytes(8, "big")
    key = (mask * (size // 4 + 1))[:size]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")
    return head + mask + masked


def hello(nick: str, room: str) -> bytes:
    return b'{"type":"hello","nick":"%s","rooms":["%s"]}\n' % (nick.encode(), room.encode())


def say(room: bytes, sender: int, sent_ns: int, ref: int) -> bytes:
    """A ``say`` whose text carries the sender and its send time."""
    text = b"B%05d:%019d:%s" % (sender, sent_ns, _PAD)
    return b'{"type":"say","room":"%s","text":"%s","id":%d}\n' % (room, text, ref)


def say_text(room: bytes, text: bytes) -> bytes:
    return b'{"type":"say","room":"%s","text":"%s"}\n' % (room, text)


def echo_marker(sender: int) -> bytes:
    """What only ``sender``'s own broadcasts contain."""
    return b'"text":"B%05d:' % sender
