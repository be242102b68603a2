"""triochat: a chat server, client library, TUI and load harness on Trio."""

from __future__ import annotations

__version__ = "0.1.0"
