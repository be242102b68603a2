"""``triochat serve``'s settings from a TOML file, the environment and the command line.

Every flag of ``serve`` has a key: its long name with ``_`` for ``-`` (``tcp_port =
5001``), and an environment variable, ``TRIOCHAT_`` and the key in capitals
(``TRIOCHAT_TCP_PORT=5001``). A flag beats the environment, which beats the file
(``--config FILE``), which beats the built-in default.

Two homes, one per kind of rule. A key's *type* is :class:`ServeFile`'s: the file is
decoded into it with msgspec, so an unknown key, or a string where a number belongs,
is refused by the decoder. A value's *range* (a port, a positive number, a readable
key file) is the flag's own argparse type: every value from the file or the
environment is read again as the flag it stands for, so it meets the very check a
flag would. Either refusal is one line naming where the value came from, the key,
the value and what is allowed.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import msgspec
from msgspec import UNSET, UnsetType

ENV_PREFIX = "TRIOCHAT_"
CONFIG_FLAG = "--config"
NOT_SETTINGS = frozenset({"config", "run"})
"""Namespace entries of ``serve`` that are not settings."""
SECRET_KEYS = frozenset({"jwt_secret_file", "jwt_public_key"})
"""Keys whose parsed value is a file's content: shown by the path given, never the content."""


class ServeFile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The keys a config file may hold, with their TOML types (see ``triochat serve
    --help`` for what each means; tests check there is one per flag)."""

    host: str | UnsetType = UNSET
    port: int | UnsetType = UNSET
    tcp_port: int | UnsetType = UNSET
    no_tcp: bool | UnsetType = UNSET
    certfile: str | UnsetType = UNSET
    keyfile: str | UnsetType = UNSET
    rate_limit: float | UnsetType = UNSET
    burst: int | UnsetType = UNSET
    handshake_timeout: float | UnsetType = UNSET
    keepalive_interval: float | UnsetType = UNSET
    keepalive_timeout: float | UnsetType = UNSET
    drain_timeout: float | UnsetType = UNSET
    max_line: int | UnsetType = UNSET
    message_timeout: float | UnsetType = UNSET
    max_rooms: int | UnsetType = UNSET
    max_rooms_per_client: int | UnsetType = UNSET
    room_history_bytes: int | UnsetType = UNSET
    history_bytes: int | UnsetType = UNSET
    max_connections: int | UnsetType = UNSET
    max_connections_per_ip: int | UnsetType = UNSET
    connect_rate: float | UnsetType = UNSET
    connect_burst: int | UnsetType = UNSET
    join_rate: float | UnsetType = UNSET
    join_burst: int | UnsetType = UNSET
    limit_loopback: bool | UnsetType = UNSET
    trusted_proxy: list[str] | UnsetType = UNSET
    allowed_origin: list[str] | UnsetType = UNSET
    outbox_events: int | UnsetType = UNSET
    outbox_bytes: int | UnsetType = UNSET
    history: int | UnsetType = UNSET
    retention: int | UnsetType = UNSET
    db: str | UnsetType = UNSET
    no_history: bool | UnsetType = UNSET
    metrics_port: int | UnsetType = UNSET
    metrics_host: str | UnsetType = UNSET
    redis: str | UnsetType = UNSET
    redis_cluster: bool | UnsetType = UNSET
    redis_cafile: str | UnsetType = UNSET
    node_id: str | UnsetType = UNSET
    redis_lease: float | UnsetType = UNSET
    auth: str | UnsetType = UNSET
    allow_insecure_auth: bool | UnsetType = UNSET
    jwt_secret_file: str | UnsetType = UNSET
    jwt_public_key: str | UnsetType = UNSET
    auth_fail_rate: float | UnsetType = UNSET
    auth_fail_burst: int | UnsetType = UNSET
    log_level: str | UnsetType = UNSET
    log_format: str | UnsetType = UNSET


KEYS: tuple[str, ...] = ServeFile.__struct_fields__
LISTS = frozenset(k for k, t in ServeFile.__annotations__.items() if "list[" in str(t))
FLAGS = frozenset(k for k, t in ServeFile.__annotations__.items() if str(t).startswith("bool"))


class SettingsError(Exception):
    """A setting from the file or the environment was refused; one line for a person."""


@dataclass
class Origin:
    """Where a setting came from: ``default``, ``file PATH``, ``env NAME`` or ``flag``."""

    source: str
    given: str | None = None
    """The value as given, for keys whose parsed value is a file's content."""


@dataclass
class Settings:
    """The parsed ``serve`` namespace and where each setting came from."""

    args: argparse.Namespace
    origins: dict[str, Origin] = field(default_factory=dict)


ParserFactory = Callable[[type[argparse.ArgumentParser]], argparse.ArgumentParser]
"""Makes the ``serve`` parser of a given class: the command line's (which exits on an
error, as argparse does), or :class:`QuietParser` to check one setting's value."""


def layered(
    make_parser: ParserFactory,
    parser_class: type[argparse.ArgumentParser],
    argv: Sequence[str],
    environ: Mapping[str, str] = os.environ,
) -> Settings:
    """Parse ``argv`` (``serve``'s arguments) over the file it names and ``environ``.

    :class:`SettingsError` if the file or the environment holds what ``serve``
    cannot take; a bad command line exits as argparse does."""
    parser = make_parser(parser_class)
    plain = parser.parse_args(argv)  # the command line alone: its own errors first
    explicit = _explicit(argv)
    layers: dict[str, tuple[Any, Origin]] = {}
    path = getattr(plain, "config", None)
    if path is not None:
        for key, value in _file(path).items():
            layers[key] = (value, Origin(f"config {path}"))
    for key in KEYS:
        name = ENV_PREFIX + key.upper()
        if name in environ:
            layers[key] = (_from_env(key, environ[name]), Origin(f"env {name}"))
    quiet = make_parser(QuietParser)
    synthesized: list[str] = []
    origins: dict[str, Origin] = {}
    for key, (value, origin) in layers.items():
        if key in explicit:
            continue
        tokens = _tokens(key, value)
        _check(quiet, key, value, origin, tokens)
        synthesized += tokens
        origin.given = str(value) if key in SECRET_KEYS else None
        origins[key] = origin
    args = parser.parse_args([*synthesized, *argv])
    for key in KEYS:
        if key in explicit:
            origins[key] = Origin("flag")
        origins.setdefault(key, Origin("default"))
    return Settings(args, origins)


def _explicit(argv: Sequence[str]) -> set[str]:
    """The keys the command line sets (``serve``'s parser takes no abbreviations)."""
    keys = set()
    for token in argv:
        if token == "--":
            break
        if token.startswith("--"):
            keys.add(token[2:].partition("=")[0].replace("-", "_"))
    return keys


def _file(path: str) -> dict[str, Any]:
    """The settings ``path`` holds; :class:`SettingsError` for an unreadable file, bad
    TOML, an unknown key or a value of the wrong type."""
    try:
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
    except OSError as exc:
        raise SettingsError(f"config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config {path}: not TOML: {exc}") from None
    try:
        decoded = msgspec.convert(raw, ServeFile)
    except msgspec.ValidationError as exc:
        raise SettingsError(f"config {path}: {_explain(exc, raw)}") from None
    return {key: getattr(decoded, key) for key in KEYS if getattr(decoded, key) is not UNSET}


def _explain(exc: msgspec.ValidationError, raw: Mapping[str, Any]) -> str:
    """msgspec's message, with the value that was refused: ``key = value: why``."""
    text = str(exc)
    why, _, where = text.partition(" - at `$.")
    key = where.rstrip("`").partition("[")[0].partition(".")[0]
    if key in raw:
        return f"{key} = {raw[key]!r}: {why[0].lower()}{why[1:]}"
    if text.startswith("Object contains unknown field"):
        unknown = text.partition("`")[2].partition("`")[0]
        return f"{unknown} = {raw.get(unknown)!r}: unknown key (see triochat serve --help)"
    return text


def _from_env(key: str, text: str) -> Any:
    if key in LISTS:
        return [item.strip() for item in text.split(",") if item.strip()]
    if key in FLAGS:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise SettingsError(
            f"env {ENV_PREFIX}{key.upper()}={text!r}: must be true or false (1/0, yes/no)"
        )
    return text


def _tokens(key: str, value: Any) -> list[str]:
    """``value`` as the flag (or flags) of ``key``."""
    flag = "--" + key.replace("_", "-")
    if key in FLAGS:
        return [flag] if value else []
    if key in LISTS:
        return [f"{flag}={item}" for item in value]
    return [f"{flag}={value}"]


class _Refused(Exception):
    """The quiet parser refused a value (its message says why)."""


class QuietParser(argparse.ArgumentParser):
    """A parser that raises instead of exiting: it checks one setting at a time."""

    def error(self, message: str) -> NoReturn:
        raise _Refused(message)


def _check(
    quiet: argparse.ArgumentParser, key: str, value: Any, origin: Origin, tokens: list[str]
) -> None:
    try:
        quiet.parse_args(tokens)
    except _Refused as exc:
        why = str(exc).partition(": ")[2] or str(exc)
        raise SettingsError(f"{origin.source}: {key} = {_shown(value)}: {why}") from None


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str | list) else str(value)


def describe(settings: Settings, mask: Callable[[str, Any], Any]) -> list[str]:
    """The effective settings as TOML lines, each with where it came from; ``mask`` may
    replace a value that must not be shown (a password in a URL)."""
    lines = []
    for key in KEYS:
        origin = settings.origins[key]
        value = getattr(settings.args, key)
        if key in SECRET_KEYS and value is not None:
            value = origin.given or "(set)"
        value = mask(key, value)
        if value is None:
            lines.append(f"# {key} is not set ({origin.source})")
            continue
        lines.append(f"{key} = {_toml(value)}  # {origin.source}")
    return lines


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return msgspec.json.encode(str(value)).decode()  # a TOML basic string is a JSON string
