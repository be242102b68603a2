"""Errors of the I/O layers, each with one meaning.

Transports translate library exceptions (trio's, trio-websocket's, the OS's)
into these at the edge, so no caller ever needs to know which transport it
talks to. Rule violations by a peer are :class:`triochat.protocol.ProtocolError`.
"""

from __future__ import annotations


class TriochatError(Exception):
    """Base of every error triochat raises on purpose."""


class ConnectionLost(TriochatError):
    """The peer went away: it closed, reset, or stopped answering. Not our doing."""


class ConnectionClosed(TriochatError):
    """We closed this connection ourselves and then tried to use it."""


class WrongPort(TriochatError):
    """The peer spoke the other listener's protocol (HTTP on the TCP port); it has been told."""


class ConnectError(TriochatError):
    """Could not reach a server. The message is one line meant for a person."""


class ListenError(TriochatError):
    """Could not open a listener (port taken, address not ours). One line for a person."""


class CertificateError(TriochatError):
    """Could not load a TLS certificate, key or CA file. One line for a person."""


class StoreError(TriochatError):
    """Could not open or use the history database. One line for a person."""


class RedisError(TriochatError):
    """Redis could not be reached, or refused a call. One line for a person."""


class Rejected(TriochatError):
    """The server refused the ``hello`` (e.g. ``nick_taken``); ``code`` is its error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
