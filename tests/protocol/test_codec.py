"""The codec: every event survives a round trip, and every bad line has its error code."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from triochat.protocol import ErrorCode, ProtocolError, decode_client, decode_server, encode
from triochat.protocol.codec import encode_history
from triochat.protocol.events import (
    Ack,
    DirectMessage,
    Dm,
    Error,
    Hello,
    History,
    HistoryPage,
    Join,
    Joined,
    Left,
    LeftReason,
    Limits,
    ListRooms,
    Members,
    Message,
    Nick,
    NickChanged,
    Notice,
    Part,
    Ping,
    Pong,
    Quit,
    RoomInfo,
    Rooms,
    Say,
    SetTopic,
    Topic,
    Welcome,
    Who,
)
from triochat.server.config import ServerConfig

CLIENT_EVENTS: list[Any] = [
    Hello(nick="ada"),
    Hello(nick="ada", rooms=["lobby", "dev"], resume={"lobby": 41}),
    Join(room="dev"),
    Part(room="dev"),
    Say(room="lobby", text="hi"),
    Say(room="lobby", text="hi", id="m1"),
    Say(room="lobby", text="hi", id=7),
    Dm(to="bob", text="psst"),
    Dm(to="bob", text="psst", id=3),
    Nick(nick="Ada2"),
    Who(),
    Who(room="lobby"),
    History(room="lobby"),
    History(room="lobby", before_seq=10, limit=5),
    Ping(),
    Ping(token="t"),
    Ping(token=5),
    Pong(token="keepalive"),
    Quit(),
    Quit(reason="bye"),
    Say(room="lobby", text="waves", action=True),
    Dm(to="bob", text="nods", id=4, action=True),
    SetTopic(room="lobby", text="friday"),
    SetTopic(room="lobby", text=""),
    ListRooms(),
    ListRooms(after="dev", limit=3),
]

TS = 1700000000.123
SERVER_EVENTS: list[Any] = [
    Welcome(nick="ada", rooms=["lobby"], limits=ServerConfig().limits()),
    Joined(room="lobby", nick="ada", seq=1, ts=TS),
    Left(room="lobby", nick="ada", reason=LeftReason.SLOW_CONSUMER, seq=2, ts=TS),
    Message(room="lobby", seq=3, from_="ada", text="hi", ts=TS),
    Message(room="lobby", seq=3, from_="ada", text="hi", ts=TS, id="m1"),
    DirectMessage(from_="ada", to="bob", text="psst", ts=TS),
    DirectMessage(from_="ada", to="bob", text="psst", ts=TS, id=9),
    Message(room="lobby", seq=3, from_="ada", text="waves", ts=TS, action=True),
    DirectMessage(from_="ada", to="bob", text="nods", ts=TS, action=True),
    Topic(room="lobby", seq=4, from_="ada", text="friday", ts=TS),
    Topic(room="lobby", seq=5, from_="ada", text="", ts=TS),
    Rooms(rooms=[]),
    Rooms(
        rooms=[RoomInfo(room="a", members=2, topic="t"), RoomInfo(room="b", members=1)], next="b"
    ),
    NickChanged(old="ada", new="Ada2"),
    Members(room="lobby", nicks=["ada", "bob"]),
    Members(room="lobby", nicks=["ada"], topic="friday"),
    Members(room=None, nicks=[]),
    HistoryPage(room="lobby", events=[]),
    HistoryPage(
        room="lobby",
        events=[
            Joined(room="lobby", nick="ada", seq=1, ts=TS),
            Message(room="lobby", seq=2, from_="ada", text="x", ts=TS),
            Left(room="lobby", nick="ada", reason=LeftReason.QUIT, seq=3, ts=TS),
            Topic(room="lobby", seq=4, from_="ada", text="friday", ts=TS),
        ],
    ),
    Ack(id=None, room="lobby", seq=4),
    Ack(id="m1", room="lobby", seq=4),
    Ping(token="keepalive"),
    Pong(),
    Pong(token=7),
    Notice(code="shutting_down", text="the server is shutting down"),
    Error(code="bad_json", message="nope"),
    Error(code="not_in_room", message="nope", ref="m1"),
]


@pytest.mark.parametrize("event", CLIENT_EVENTS, ids=repr)
def test_client_events_round_trip(event: Any) -> None:
    line = encode(event)
    assert line.endswith(b"\n")
    assert b"\n" not in line[:-1]
    assert decode_client(line) == event
    assert decode_client(line.decode()) == event


@pytest.mark.parametrize("event", SERVER_EVENTS, ids=repr)
def test_server_events_round_trip(event: Any) -> None:
    line = encode(event)
    assert line.endswith(b"\n")
    assert b"\n" not in line[:-1]
    assert decode_server(line) == event


def test_type_names_on_the_wire() -> None:
    expected: dict[type, str] = {
        Welcome: "welcome",
        Joined: "joined",
        Left: "left",
        Message: "message",
        DirectMessage: "dm",
        NickChanged: "nick",
        Members: "members",
        Topic: "topic",
        Rooms: "rooms",
        HistoryPage: "history",
        Ack: "ack",
        Ping: "ping",
        Pong: "pong",
        Notice: "notice",
        Error: "error",
    }
    for event in SERVER_EVENTS:
        assert msgspec.json.decode(encode(event))["type"] == expected[type(event)]


def test_message_sender_is_called_from_on_the_wire() -> None:
    wire = msgspec.json.decode(encode(Message(room="r", seq=1, from_="ada", text="x", ts=TS)))
    assert wire == {"type": "message", "room": "r", "seq": 1, "from": "ada", "text": "x", "ts": TS}


def test_ack_always_carries_id_even_when_null() -> None:
    assert encode(Ack(id=None, room="r", seq=1)) == b'{"type":"ack","id":null,"room":"r","seq":1}\n'


def test_optional_fields_are_omitted_when_absent() -> None:
    assert encode(Pong()) == b'{"type":"pong"}\n'
    assert encode(Error(code="x", message="y")) == b'{"type":"error","code":"x","message":"y"}\n'


def test_action_is_on_the_wire_only_when_true() -> None:
    plain = Message(room="r", seq=1, from_="ada", text="x", ts=TS)
    assert b"action" not in encode(plain)
    acted = msgspec.json.decode(encode(msgspec.structs.replace(plain, action=True)))
    assert acted["action"] is True
    assert b"action" not in encode(DirectMessage(from_="a", to="b", text="x", ts=TS))


def test_a_client_action_may_be_absent_null_or_a_bool() -> None:
    for line, action in [
        (b'{"type":"say","room":"r","text":"x"}', None),
        (b'{"type":"say","room":"r","text":"x","action":null}', None),
        (b'{"type":"say","room":"r","text":"x","action":false}', False),
        (b'{"type":"dm","to":"b","text":"x","action":true}', True),
    ]:
        event = decode_client(line)
        assert isinstance(event, Say | Dm)
        assert event.action is action
    with pytest.raises(ProtocolError) as caught:
        decode_client(b'{"type":"say","room":"r","text":"x","action":"yes"}')
    assert caught.value.code == ErrorCode.BAD_EVENT


def test_rooms_omit_a_missing_topic_and_next() -> None:
    page = Rooms(rooms=[RoomInfo(room="dev", members=2)])
    assert encode(page) == b'{"type":"rooms","rooms":[{"room":"dev","members":2}]}\n'
    assert b"topic" not in encode(Members(room="dev", nicks=[]))


def test_topic_and_list_decode_from_their_wire_form() -> None:
    assert decode_client(b'{"type":"topic","room":"dev","text":""}') == SetTopic(
        room="dev", text=""
    )
    assert decode_client(b'{"type":"list"}') == ListRooms()
    with pytest.raises(ProtocolError) as caught:
        decode_client(b'{"type":"list","limit":"5"}')
    assert caught.value.code == ErrorCode.BAD_EVENT


def test_members_room_is_null_for_who_without_room() -> None:
    assert (
        encode(Members(room=None, nicks=["a"])) == b'{"type":"members","room":null,"nicks":["a"]}\n'
    )


def test_welcome_limits_announce_the_config() -> None:
    config = ServerConfig(max_line=1000, rate_limit=2.5, burst=4)
    limits = decode_server(encode(Welcome(nick="a", rooms=[], limits=config.limits())))
    assert isinstance(limits, Welcome)
    assert limits.limits == Limits(
        max_line=1000,
        max_text=8000,
        max_nick=32,
        max_room=64,
        max_rooms=100,
        rate_limit=2.5,
        burst=4,
        max_history_page=500,
        outbox_events=1000,
        outbox_bytes=1024 * 1024,
        max_topic=300,
    )


def test_encode_history_embeds_already_encoded_lines() -> None:
    events = [
        Joined(room="r", nick="a", seq=1, ts=TS),
        Message(room="r", seq=2, from_="a", text="x", ts=TS),
    ]
    line = encode_history("r", [encode(e) for e in events])
    assert line.count(b"\n") == 1
    assert decode_server(line) == HistoryPage(room="r", events=events)  # type: ignore[arg-type]


# --- bad lines ----------------------------------------------------------------


def _code(line: bytes | str) -> ErrorCode:
    with pytest.raises(ProtocolError) as caught:
        decode_client(line)
    return caught.value.code


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b"{",
        b'{"type":"say",}',
        b"NaN",
        b'{"type":"say","room":"a","text":"\\ud800"}',  # a lone surrogate escape
    ],
)
def test_invalid_json_is_bad_json(line: bytes) -> None:
    assert _code(line) is ErrorCode.BAD_JSON


@pytest.mark.parametrize(
    "line",
    [
        b"\xff",
        b'{"type":"say","room":"lobby","text":"\xff\xfe"}',
        b'{"type":"say","room":"lobby","text":"\xc0\x80"}',  # overlong encoding
        b'{"type":"say","room":"lobby","text":"\xed\xa0\x80"}',  # an encoded surrogate
    ],
)
def test_invalid_utf8_is_bad_json(line: bytes) -> None:
    assert _code(line) is ErrorCode.BAD_JSON


@pytest.mark.parametrize(
    "line",
    [
        b"[]",
        b"1",
        b'"hello"',
        b"null",
        b"{}",
        b'{"nick":"ada"}',  # no type
        b'{"type":"teleport"}',  # unknown type
        b'{"type":"welcome","nick":"a","rooms":[],"limits":{}}',  # a server event
        b'{"type":"hello"}',  # missing nick
        b'{"type":"hello","nick":5}',
        b'{"type":"hello","nick":"a","rooms":"lobby"}',
        b'{"type":"hello","nick":"a","resume":{"lobby":"3"}}',
        b'{"type":"say","room":"lobby"}',  # missing text
        b'{"type":"say","room":"lobby","text":["x"]}',
        b'{"type":"say","room":"lobby","text":"x","id":1.5}',
        b'{"type":"say","room":"lobby","text":"x","id":{}}',
        b'{"type":"dm","text":"x"}',
        b'{"type":"join"}',
        b'{"type":"join","room":null}',
        b'{"type":"part","room":1}',
        b'{"type":"nick","nick":true}',
        b'{"type":"who","room":3}',
        b'{"type":"history","room":"lobby","limit":1.0}',
        b'{"type":"history","room":"lobby","before_seq":"5"}',
        b'{"type":"ping","token":[]}',
        b'{"type":"quit","reason":1}',
        b'{"type":1}',
    ],
)
def test_wrong_shape_is_bad_event(line: bytes) -> None:
    assert _code(line) is ErrorCode.BAD_EVENT


def test_error_message_names_the_field() -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_client(b'{"type":"history","room":"lobby","limit":"ten"}')
    assert "$.limit" in caught.value.message


def test_unknown_fields_are_ignored() -> None:
    line = b'{"type":"say","room":"lobby","text":"x","colour":"red","v":2,"extra":{"a":[1]}}'
    assert decode_client(line) == Say(room="lobby", text="x")


def test_client_sent_from_is_ignored() -> None:
    event = decode_client(b'{"type":"say","room":"lobby","text":"x","from":"mallory"}')
    assert event == Say(room="lobby", text="x")
    assert "mallory" not in repr(event)


def test_surrounding_whitespace_and_cr_are_tolerated() -> None:
    assert decode_client(b' {"type":"ping"}\r') == Ping()


def test_server_decoder_refuses_client_only_events() -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_server(b'{"type":"say","room":"a","text":"x"}')
    assert caught.value.code is ErrorCode.BAD_EVENT


def test_str_with_lone_surrogate_is_bad_json() -> None:
    assert _code('{"type":"say","room":"a","text":"\ud800"}') is ErrorCode.BAD_JSON
