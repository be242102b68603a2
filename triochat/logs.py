"""Logs an operator can use: triochat's own at the chosen level, every library's only
at WARNING (unless ``--log-level debug``), as text or as one JSON object per line.

A structured line carries its fields as ``extra``: the text format shows the message
(which names them), the JSON format adds each field under its own stable name, after
``ts``, ``level``, ``logger`` and ``message``.
"""

from __future__ import annotations

import logging
import sys
import time

import msgspec

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_PLAIN = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
"""The attributes every record has: anything else is a field given as ``extra``."""


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (Unix seconds), ``level``, ``logger``,
    ``message``, then the record's own fields; ``error`` holds a traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _PLAIN:
                line[key] = value
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return msgspec.json.encode(line, enc_hook=str).decode()


def configure(level: str, form: str = "text") -> None:
    """Send logs to stderr: triochat's at ``level``, libraries' at WARNING or, when
    ``level`` is ``debug``, at DEBUG too."""
    handler = logging.StreamHandler(sys.stderr)
    if form == "json":
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter(TEXT)
        formatter.converter = time.localtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    logging.getLogger("triochat").setLevel(level.upper())
