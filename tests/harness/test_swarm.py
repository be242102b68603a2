"""The lean clients' own WebSocket reading: frames split by hand must give exactly the lines."""

from __future__ import annotations

import socket

import pytest
import trio

from harness.swarm import OP_CLOSE, OP_PING, OP_PONG, Member, WireError
from triochat.client import parse_url


def _frame(payload: bytes, opcode: int = 1, *, final: bool = True, masked: bool = False) -> bytes:
    """A frame as a server writes it (unmasked unless asked)."""
    head = bytes([(0x80 if final else 0) | opcode])
    size = len(payload)
    mask = 0x80 if masked else 0
    if size < 126:
        head += bytes([mask | size])
    elif size < 1 << 16:
        head += bytes([mask | 126]) + size.to_bytes(2)
    else:
        head += bytes([mask | 127]) + size.to_bytes(8)
    return head + (b"\0\0\0\0" if masked else b"") + payload


def _member() -> Member:
    ours, _theirs = socket.socketpair()
    address = parse_url("ws://127.0.0.1:1")
    return Member(0, "n", address, trio.socket.from_stdlib_socket(ours), ours, True)


@pytest.fixture
def member() -> Member:
    return _member()


@pytest.mark.parametrize("step", [1, 2, 3, 7, 100, 70_000])
def test_lines_come_out_whole_however_the_bytes_are_cut(step: int) -> None:
    member = _member()
    big = b"x" * 70_000  # a 64-bit length
    mid = b"y" * 300  # a 16-bit length
    wire = _frame(b'{"a":1}\n{"b":2}') + _frame(mid)
    # Fragmented messages: a first frame that is not final, then a final continuation.
    wire += _frame(b"he", final=False) + _frame(big, opcode=0)
    wire += _frame(b'{"c":', final=False) + _frame(b"3}", opcode=0)
    lines: list[bytes] = []
    for at in range(0, len(wire), step):  # cut everywhere: headers, lengths, payloads
        lines += member.take(wire[at : at + step])
    assert lines == [b'{"a":1}', b'{"b":2}', mid, b"he" + big, b'{"c":3}']
    assert not member.pending


@pytest.mark.parametrize("final", [True, False])
def test_a_message_that_ends_in_its_newline_gets_no_second(member: Member, final: bool) -> None:
    """The server's messages are whole lines, newline included: one more would be a blank
    line, and a round with a blank line is decoded line by line (the slow path)."""
    wire = _frame(b'{"a":1}\n{"b":2}\n')
    if final:
        wire += _frame(b'{"c":3}\n')
    else:
        wire += _frame(b'{"c":', final=False) + _frame(b"3}\n", opcode=0)
    assert member.chunk(wire) == b'{"a":1}\n{"b":2}\n{"c":3}\n'


def test_pings_are_answered_and_a_close_is_echoed(member: Member) -> None:
    assert member.take(_frame(b"tok", OP_PING) + _frame(b"\x03\xe8bye", OP_CLOSE)) == []
    pong, close = member.outbox
    assert pong[0] == 0x80 | OP_PONG
    assert close[0] == 0x80 | OP_CLOSE


def test_a_masked_frame_from_the_server_is_a_wire_error(member: Member) -> None:
    with pytest.raises(WireError):
        member.take(_frame(b"{}", masked=True))


@pytest.mark.parametrize("size", [1, 125, 126, 300, 65_535])
def test_a_read_of_one_whole_message_gives_its_line(member: Member, size: int) -> None:
    line = b"x" * (size - 1) + b"\n"
    assert member.chunk(_frame(line)) == line
    assert member.chunk(_frame(line[:-1])) == line  # no newline of its own: one is added
    assert not member.pending


def test_a_whole_frame_read_while_a_message_is_fragmented_continues_it(member: Member) -> None:
    """A read that is one final frame is not a message of its own while an earlier one
    is still open: it ends that one."""
    assert member.chunk(_frame(b'{"c":', final=False)) == b""
    assert member.chunk(_frame(b"3}\n", opcode=0)) == b'{"c":3}\n'
    assert member.chunk(_frame(b'{"d":', final=False)) == b""
    assert member.chunk(_frame(b"4}\n")) == b'{"d":4}\n'


def test_a_frame_cut_short_or_followed_by_more_is_not_taken_whole(member: Member) -> None:
    frame = _frame(b'{"a":1}\n')
    assert member.chunk(frame[:-3]) == b""
    assert member.chunk(frame[-3:] + frame[:4]) == b'{"a":1}\n'
    assert member.chunk(frame[4:]) == b'{"a":1}\n'


@pytest.mark.parametrize("size", [3, 248])  # 248: as long (256 bytes) as 254, its length byte, + 2
def test_a_masked_frame_is_a_wire_error_in_a_read_of_its_own(member: Member, size: int) -> None:
    with pytest.raises(WireError):
        member.chunk(_frame(b"x" * (size - 1) + b"\n", masked=True))
