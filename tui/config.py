"""What the TUI remembers between runs: ``$XDG_CONFIG_HOME/triochat/tui.toml``.

The file is the person's as much as ours: they may edit it (``highlight``,
``bell``), and the app rewrites it when the server, nick or rooms change, keeping
what they wrote. Flags override it for one run without changing it, except
that what the run then does (the rooms joined, the nick taken) is remembered.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import msgspec

FILE_NAME = "tui.toml"


class TuiFile(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    url: str | None = None
    nick: str | None = None
    rooms: list[str] = msgspec.field(default_factory=list)
    """Rooms to rejoin, in the order they were joined."""
    highlight: list[str] = msgspec.field(default_factory=list)
    """Words that count as a mention, besides our nick (whole words, any case)."""
    bell: bool = True
    """Ring the terminal bell on a mention or DM the person cannot see."""


class ConfigError(Exception):
    """The file is there but unreadable or invalid; the message is one line."""


def default_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "triochat" / FILE_NAME


def load(path: Path) -> TuiFile:
    """The remembered settings; a missing file is an empty one."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return TuiFile()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    try:
        return msgspec.toml.decode(data, type=TuiFile)
    except msgspec.DecodeError as exc:  # ValidationError is one
        raise ConfigError(f"{path}: {exc}") from None


@dataclass
class Memory:
    """Keeps ``path`` in step with what the app does; writes only when something changed."""

    path: Path
    saved: TuiFile

    def remember(self, *, url: str, nick: str | None, rooms: list[str]) -> str | None:
        """Save what changed; a reason (one line) when the file could not be written."""
        updated = msgspec.structs.replace(
            self.saved, url=url, nick=nick or self.saved.nick, rooms=rooms
        )
        if updated == self.saved:
            return None
        self.saved = updated
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_suffix(".tmp")
            temporary.write_bytes(msgspec.toml.encode(updated))
            temporary.replace(self.path)
        except OSError as exc:  # a read-only home must not stop the chat
            return f"could not remember settings in {self.path}: {exc.strerror}"
        return None
