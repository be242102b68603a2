"""Line framing: LineSplitter for byte streams, split_message for WebSocket messages."""

from __future__ import annotations

import pytest

from triochat.protocol import ErrorCode, LineSplitter, ProtocolError, split_message

LINES = [b'{"type":"ping","token":1}', b'{"type":"say","room":"a","text":"x"}', b"{}"]
STREAM = b"".join(line + b"\n" for line in LINES)


def _feed_in_chunks(splitter: LineSplitter, data: bytes, size: int) -> list[bytes]:
    lines: list[bytes] = []
    for start in range(0, len(data), size):
        lines += splitter.feed(data[start : start + size])
    return lines


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16, len(STREAM) - 1, len(STREAM)])
def test_lines_survive_any_chunking(size: int) -> None:
    splitter = LineSplitter(max_line=100)
    assert _feed_in_chunks(splitter, STREAM, size) == LINES
    assert splitter.pending == 0


def test_unfinished_line_is_held_back() -> None:
    splitter = LineSplitter(max_line=100)
    assert splitter.feed(b'{"type":"pi') == []
    assert splitter.pending == len(b'{"type":"pi')
    assert splitter.feed(b'ng"}\n{"a"') == [b'{"type":"ping"}']
    assert splitter.pending == 4


def test_blank_lines_are_skipped() -> None:
    splitter = LineSplitter(max_line=100)
    assert splitter.feed(b"\n\n  \n\r\n{}\n\t\n") == [b"{}"]


def test_crlf_keeps_cr_for_the_decoder_to_tolerate() -> None:
    splitter = LineSplitter(max_line=100)
    assert splitter.feed(b"{}\r\n[]\r\n") == [b"{}\r", b"[]\r"]


def test_line_of_exactly_max_line_is_accepted() -> None:
    splitter = LineSplitter(max_line=10)
    assert splitter.feed(b"x" * 10 + b"\n") == [b"x" * 10]


def test_complete_line_over_max_line_is_too_large() -> None:
    splitter = LineSplitter(max_line=10)
    with pytest.raises(ProtocolError) as caught:
        splitter.feed(b"x" * 11 + b"\n")
    assert caught.value.code is ErrorCode.TOO_LARGE


def test_unfinished_line_over_max_line_is_too_large_before_its_newline() -> None:
    """A peer that never sends a newline costs at most max_line bytes."""
    splitter = LineSplitter(max_line=10)
    splitter.feed(b"x" * 6)
    with pytest.raises(ProtocolError) as caught:
        splitter.feed(b"x" * 5)
    assert caught.value.code is ErrorCode.TOO_LARGE


def test_long_tail_after_a_newline_is_too_large_once_the_whole_lines_are_out() -> None:
    splitter = LineSplitter(max_line=10)
    assert splitter.feed(b"ok\n" + b"x" * 11) == [b"ok"]  # the complete line is not lost
    with pytest.raises(ProtocolError) as caught:
        splitter.check()
    assert caught.value.code is ErrorCode.TOO_LARGE
    with pytest.raises(ProtocolError):
        splitter.feed(b"\n")


def test_long_line_in_the_middle_of_a_chunk_is_too_large() -> None:
    splitter = LineSplitter(max_line=10)
    with pytest.raises(ProtocolError) as caught:
        splitter.feed(b"ok\n" + b"x" * 11 + b"\nok\n")
    assert caught.value.code is ErrorCode.TOO_LARGE


def test_bytearray_chunks_are_accepted() -> None:
    splitter = LineSplitter(max_line=100)
    assert splitter.feed(bytearray(b"{}")) == []
    assert splitter.feed(bytearray(b"\n")) == [b"{}"]


# --- WebSocket messages -----------------------------------------------------------


def test_message_with_one_event_and_no_newline() -> None:
    assert split_message(b'{"type":"ping"}', max_line=100) == [b'{"type":"ping"}']


def test_message_with_several_lines_last_newline_optional() -> None:
    assert split_message(b"{}\n[]\n1", max_line=100) == [b"{}", b"[]", b"1"]
    assert split_message(b"{}\n[]\n1\n", max_line=100) == [b"{}", b"[]", b"1"]


def test_message_blank_lines_and_crlf() -> None:
    assert split_message(b"\r\n{}\r\n\n \n", max_line=100) == [b"{}\r"]
    assert split_message(b"", max_line=100) == []
    assert split_message(b"\n", max_line=100) == []


def test_message_line_over_max_line_is_too_large() -> None:
    with pytest.raises(ProtocolError) as caught:
        split_message(b"{}\n" + b"x" * 11, max_line=10)
    assert caught.value.code is ErrorCode.TOO_LARGE
    assert split_message(b"x" * 10 + b"\n" + b"y" * 10, max_line=10) == [b"x" * 10, b"y" * 10]
