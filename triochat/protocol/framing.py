"""NDJSON framing: where one event ends and the next begins.

Theory of operation: a TCP byte stream is cut into lines by
:class:`LineSplitter`, which holds at most ``max_line`` bytes of an unfinished
line, so a peer that never sends a newline costs a bounded amount of memory.
A WebSocket text message is already a complete unit; :func:`split_message`
cuts it into its lines (the last may lack its newline). Both skip blank lines
(an ``nc`` user pressing Enter on an empty line is not an error) and both enforce the
same per-line limit with ``too_large``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from triochat.protocol.errors import ErrorCode, ProtocolError


def _too_large(max_line: int) -> ProtocolError:
    return ProtocolError(ErrorCode.TOO_LARGE, f"line longer than {max_line} bytes")


def _complete(lines: list[bytes], max_line: int) -> list[bytes]:
    kept = []
    for line in lines:
        if len(line) > max_line:
            raise _too_large(max_line)
        if line.strip():
            kept.append(line)
    return kept


def split_message(message: bytes, max_line: int) -> list[bytes]:
    """The non-blank lines of one WebSocket message, each at most ``max_line`` bytes."""
    return _complete(message.split(b"\n"), max_line)


class LineSplitter:
    """Incremental splitter for a byte stream; feed chunks, get whole lines.

    The unfinished line is a ``bytearray`` that chunks are appended to, so a line
    that arrives a byte at a time costs linear time, not a copy per byte.
    """

    def __init__(self, max_line: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_line = max_line
        self._clock = clock
        self._partial = bytearray()
        self.since: float | None = None
        """When (by ``clock``) the first byte of the unfinished line arrived; None without one."""

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held back."""
        return len(self._partial)

    def feed(self, data: bytes | bytearray) -> list[bytes]:
        """Add ``data``; return every line it completes (without newlines).

        Complete lines come out even when an over-long line follows them in the
        same chunk; that one raises ``too_large`` on the next call (see :meth:`check`).
        """
        self.check()
        if b"\n" not in data:
            if data and not self._partial:
                self.since = self._clock()
            self._partial += data
            self.check()
            return []
        if self._partial:
            self._partial += data
            data = bytes(self._partial)
            self._partial.clear()
        *lines, rest = bytes(data).split(b"\n")
        if rest:
            self._partial += rest
            self.since = self._clock()
        else:
            self.since = None
        return _complete(lines, self._max_line)

    def check(self) -> None:
        """``too_large`` if the unfinished line is already over the limit."""
        if len(self._partial) > self._max_line:
            raise _too_large(self._max_line)
