"""The decoder's nesting limit: brackets inside strings do not count, escapes included."""

from __future__ import annotations

import pytest

from triochat.protocol import ErrorCode, ProtocolError, decode_client
from triochat.protocol.codec import MAX_DEPTH
from triochat.protocol.events import Say


def test_brackets_inside_strings_do_not_count() -> None:
    text = "[{" * 3000 + '\\"' + "[" * 100 + "\\\\"
    line = b'{"type":"say","room":"lobby","text":"%s","z":[[1]]}' % text.encode()
    event = decode_client(line)
    assert isinstance(event, Say)
    assert event.text.startswith("[{[{")


@pytest.mark.parametrize("line", [b"[" * (MAX_DEPTH + 1), "[" * (MAX_DEPTH + 1)])
def test_too_deep_is_bad_json_for_bytes_and_str(line: bytes | str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_client(line)
    assert caught.value.code is ErrorCode.BAD_JSON


def test_an_escaped_backslash_ends_before_the_quote() -> None:
    """``"\\\\"`` is a whole string: the brackets after it are outside strings."""
    line = b'{"type":"say","room":"lobby","text":"\\\\","z":%s}' % (
        b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    )
    with pytest.raises(ProtocolError) as caught:
        decode_client(line)
    assert caught.value.code is ErrorCode.BAD_JSON
