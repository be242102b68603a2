"""Property tests: whatever a peer sends, the protocol layer fails only with ProtocolError."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.protocol.strategies import event_like, json_values
from triochat.protocol import LineSplitter, ProtocolError, decode_client, split_message
from triochat.protocol.events import Ping


def _decode_or_protocol_error(line: bytes | str) -> None:
    with contextlib.suppress(ProtocolError):
        decode_client(line)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_random_bytes_decode_or_protocol_error(data: bytes) -> None:
    _decode_or_protocol_error(data)


@settings(max_examples=300)
@given(json_values)
def test_random_json_decodes_or_protocol_error(value: Any) -> None:
    _decode_or_protocol_error(json.dumps(value).encode())


@settings(max_examples=500)
@given(event_like)
def test_event_like_objects_decode_or_protocol_error(obj: dict[str, Any]) -> None:
    line = json.dumps(obj)
    _decode_or_protocol_error(line.encode())
    _decode_or_protocol_error(line)


@settings(max_examples=300)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=5))
def test_unknown_fields_never_change_a_valid_event(extra: dict[str, Any]) -> None:
    obj = {**extra, "type": "ping", "token": "t"}
    assert decode_client(json.dumps(obj)) == Ping(token="t")


@settings(max_examples=200)
@given(
    st.lists(st.binary(max_size=40), max_size=20),
    st.integers(min_value=1, max_value=64),
)
def test_line_splitter_on_random_chunks_raises_only_protocol_error(
    chunks: list[bytes], max_line: int
) -> None:
    splitter = LineSplitter(max_line)
    try:
        for chunk in chunks:
            for line in splitter.feed(chunk):
                assert b"\n" not in line
                assert line.strip()
                assert len(line) <= max_line
                _decode_or_protocol_error(line)
    except ProtocolError:
        pass


@settings(max_examples=200)
@given(
    st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")), max_size=15),
    st.data(),
)
def test_line_splitter_reassembles_lines_however_the_stream_is_cut(
    lines: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    splitter = LineSplitter(max_line=30)
    got: list[bytes] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += splitter.feed(stream[start:end])
    assert got == [line for line in lines if line.strip()]
    assert splitter.pending == 0


@settings(max_examples=200)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=64))
def test_split_message_raises_only_protocol_error(message: bytes, max_line: int) -> None:
    try:
        for line in split_message(message, max_line):
            _decode_or_protocol_error(line)
    except ProtocolError:
        pass
