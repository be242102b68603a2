"""Every event of the wire contract, as typed msgspec structs.

The ``type`` field is the msgspec tag, so decoding a line picks the right
struct and validates every field in one pass. Two unions exist because the two
directions differ: :data:`ClientEvent` is what a server accepts and
:data:`ServerEvent` is what a client accepts. ``ping``/``pong`` are the only
events both sides may send; they share one struct.

Unknown fields are ignored on decode (forward compatibility); a client-sent
``from`` is therefore dropped before the server ever sees it.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec

Ref = str | int | None
"""A client-chosen correlation id, echoed back in ``ack`` and ``error.ref``."""


class LeftReason(StrEnum):
    PART = "part"
    QUIT = "quit"
    TIMEOUT = "timeout"
    DISCONNECTED = "disconnected"
    SLOW_CONSUMER = "slow_consumer"
    SHUTDOWN = "shutdown"


class _Event(msgspec.Struct, tag_field="type", omit_defaults=True, kw_only=True):
    pass


# --- both directions -------------------------------------------------------


class Ping(_Event, tag="ping"):
    token: Ref = None


class Pong(_Event, tag="pong"):
    token: Ref = None


# --- client -> server --------------------------------------------------------


class Hello(_Event, tag="hello"):
    nick: str
    rooms: list[str] | None = None
    resume: dict[str, int] | None = None
    password: str | None = None
    """The account's password, for a registered nick (see docs/security.md)."""
    token: str | None = None
    """A JWT signed by an application the operator trusts; its ``sub`` is the nick."""


class Register(_Event, tag="register"):
    """Register the current nick with ``password``; answered by ``notice{registered}``."""

    password: str


class Join(_Event, tag="join"):
    room: str


class Part(_Event, tag="part"):
    room: str


class Say(_Event, tag="say"):
    room: str
    text: str
    id: Ref = None
    action: bool | None = None
    """An action (``/me waves``): the text says what the sender does."""


class Dm(_Event, tag="dm"):
    to: str
    text: str
    id: Ref = None
    action: bool | None = None


class Nick(_Event, tag="nick"):
    nick: str


class Who(_Event, tag="who"):
    room: str | None = None


class History(_Event, tag="history"):
    room: str
    before_seq: int | None = None
    limit: int | None = None


class Quit(_Event, tag="quit"):
    reason: str | None = None


class SetTopic(_Event, tag="topic"):
    """Set ``room``'s topic (a member only); empty ``text`` clears it."""

    room: str
    text: str


class ListRooms(_Event, tag="list"):
    """A page of the rooms with members, by name, after ``after``."""

    after: str | None = None
    limit: int | None = None


ClientEvent = (
    Hello
    | Join
    | Part
    | Say
    | Dm
    | Nick
    | Who
    | History
    | Ping
    | Pong
    | Quit
    | Register
    | SetTopic
    | ListRooms
)


# --- server -> client --------------------------------------------------------


class Limits(msgspec.Struct, kw_only=True):
    """What a client may do, announced in ``welcome`` so clients need not guess."""

    max_line: int
    max_text: int
    max_nick: int
    max_room: int
    max_rooms: int
    rate_limit: float
    burst: int
    max_history_page: int
    outbox_events: int
    outbox_bytes: int
    max_topic: int


class Welcome(_Event, tag="welcome"):
    nick: str
    rooms: list[str]
    limits: Limits
    server_id: str = ""
    """Identifies the history a client's ``seq`` numbers refer to: it changes when
    the server starts with a different (or no) history, so a client must not
    ``resume`` across a change."""


class Joined(_Event, tag="joined"):
    room: str
    nick: str
    seq: int
    ts: float


class Left(_Event, tag="left"):
    room: str
    nick: str
    reason: LeftReason
    seq: int
    ts: float


class Message(_Event, tag="message"):
    room: str
    seq: int
    from_: str = msgspec.field(name="from")
    text: str
    ts: float
    id: Ref = None
    action: bool = False
    """The sender's ``say.action``: omitted when false, like every optional field."""


class DirectMessage(_Event, tag="dm"):
    from_: str = msgspec.field(name="from")
    to: str
    text: str
    ts: float
    id: Ref = None
    action: bool = False


class NickChanged(_Event, tag="nick"):
    old: str
    new: str


class Topic(_Event, tag="topic"):
    """A room's topic was set (``text``) or cleared (``text`` empty) by ``from``."""

    room: str
    seq: int
    from_: str = msgspec.field(name="from")
    text: str
    ts: float


class Members(_Event, tag="members"):
    room: str | None
    nicks: list[str]
    topic: str | None = None
    """The room's current topic (``who`` of a room, and after a join); omitted when none."""


class RoomInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One room of a ``rooms`` page."""

    room: str
    members: int
    topic: str | None = None


class Rooms(_Event, tag="rooms"):
    """The answer to ``list``: rooms with members, by name; ``next`` is the ``after`` of
    the next page, present exactly when more rooms follow."""

    rooms: list[RoomInfo]
    next: str | None = None


RoomEvent = Joined | Left | Message | Topic
"""Events that carry a room ``seq``: the ones history stores and replays."""


class HistoryPage(_Event, tag="history"):
    room: str
    events: list[RoomEvent]


class Ack(_Event, tag="ack", omit_defaults=False):
    # ``id`` is always present (null when the say had none), so no omit_defaults.
    id: Ref
    room: str
    seq: int


class Notice(_Event, tag="notice"):
    code: str
    text: str


class Error(_Event, tag="error"):
    code: str
    message: str
    ref: Ref = None


ServerEvent = (
    Welcome
    | Joined
    | Left
    | Message
    | DirectMessage
    | NickChanged
    | Members
    | Topic
    | Rooms
    | HistoryPage
    | Ack
    | Ping
    | Pong
    | Notice
    | Error
)
