"""argparse value types and parser shared by the command lines (``triochat``, ``harness``).

A bad command line is one line on stderr and exit status 2: the flag, the value,
and what is allowed. Each type here turns a bad value into that line.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from triochat.server.redis_url import parse_redis_url
from triochat.transport.upgrade import normal_origin, origin_text

NODE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class Parser(argparse.ArgumentParser):
    """argparse, with a refused command line as one line instead of a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _number(text: str, kind: type[int] | type[float]) -> float:
    try:
        value = kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def port(text: str) -> int:
    value = int(_number(text, int))
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (0-65535)")
    return value


def non_negative(text: str) -> float:
    value = _number(text, float)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{value:g} must be 0 or more")
    return value


def positive(text: str) -> float:
    value = _number(text, float)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value:g} must be more than 0")
    return value


def non_negative_int(text: str) -> int:
    value = int(_number(text, int))
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return value


def positive_int(text: str) -> int:
    return at_least(1)(text)


def at_least(low: int) -> Callable[[str], int]:
    """A whole number of ``low`` or more (e.g. ``--max-line``'s floor)."""

    def parse(text: str) -> int:
        value = int(_number(text, int))
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be {low} or more")
        return value

    return parse


def number_at_least(low: float) -> Callable[[str], float]:
    """A finite number of ``low`` or more (seconds, a rate)."""

    def parse(text: str) -> float:
        value = _number(text, float)
        if not value >= low:
            raise argparse.ArgumentTypeError(f"{value:g} must be {low:g} or more")
        return value

    return parse


def network(text: str) -> str:
    """An IP address or network (``10.0.0.0/8``); host bits are allowed (``10.1.2.3/8``)."""
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address or network") from None


def origin(text: str) -> str:
    """A browser origin, ``scheme://host[:port]`` (normalised), or ``*``."""
    if text.strip() == "*":
        return "*"
    found = normal_origin(text)
    if found is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an origin: scheme://host[:port] (no path), or *"
        )
    return origin_text(found)


def file_in_existing_folder(text: str) -> str:
    """A file path whose folder exists: a mistyped path is refused, never created."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path is not a file")
    folder = Path(text).parent
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: no such directory {folder}")
    return text


def jwt_secret_file(text: str) -> bytes:
    """The HS256 secret in file ``text`` (surrounding whitespace dropped); at least 32 bytes."""
    try:
        secret = Path(text).read_bytes().strip()
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{text}: {exc.strerror or exc}") from None
    if len(secret) < 32:
        raise argparse.ArgumentTypeError(f"{text}: an HS256 secret needs at least 32 bytes")
    return secret


def jwt_public_key(text: str) -> bytes:
    """The PEM public key (RSA or Ed25519) in file ``text``."""
    from triochat.server.auth import load_public_key  # cryptography loads only when asked

    try:
        return load_public_key(Path(text).read_bytes())
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{text}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text}: {exc}") from None


def redis_url(text: str) -> str:
    """A ``--redis`` URL that names a Redis: ``redis://``, ``rediss://`` or ``unix://``."""
    try:
        parse_redis_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def node_id(text: str) -> str:
    """A ``--node-id``: 1-64 letters, digits, ``-``, ``_`` or ``.`` (it names Redis keys)."""
    if not NODE_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r}: 1-64 letters, digits, '-', '_' or '.'")
    return text
