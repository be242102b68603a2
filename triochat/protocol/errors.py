"""The protocol's one error type.

Every rule the protocol enforces fails with :class:`ProtocolError`, carrying the
stable wire ``code`` a peer sees in ``error{code, message}``. Codes are the
contract; messages are for people and may change.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    BAD_JSON = "bad_json"
    BAD_EVENT = "bad_event"
    TOO_LARGE = "too_large"
    MESSAGE_TIMEOUT = "message_timeout"
    RATE_LIMITED = "rate_limited"
    NICK_TAKEN = "nick_taken"
    NICK_INVALID = "nick_invalid"
    ROOM_INVALID = "room_invalid"
    NOT_IN_ROOM = "not_in_room"
    NO_SUCH_USER = "no_such_user"
    HELLO_FIRST = "hello_first"
    HELLO_TIMEOUT = "hello_timeout"
    TOO_MANY_ROOMS = "too_many_rooms"
    TIMEOUT = "timeout"
    WRONG_PORT = "wrong_port"
    TLS_REQUIRED = "tls_required"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    AUTH_REQUIRED = "auth_required"
    AUTH_FAILED = "auth_failed"
    AUTH_RATE_LIMITED = "auth_rate_limited"
    INSECURE_AUTH = "insecure_auth"
    TOKEN_INVALID = "token_invalid"
    TOKEN_EXPIRED = "token_expired"
    ROOM_FORBIDDEN = "room_forbidden"
    UNAVAILABLE = "unavailable"


class ProtocolError(Exception):
    """A peer broke a rule of the wire contract; ``code`` says which."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
