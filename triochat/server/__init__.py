"""The chat server: hub (rules and fan-out), sessions (one per client), app (listeners)."""

from __future__ import annotations

from triochat.server.app import Server, serve
from triochat.server.config import ServerConfig

__all__ = ["Server", "ServerConfig", "serve"]
