"""Small waits on what a client receives, so tests read as what a user sees."""

from __future__ import annotations

from typing import Any, TypeVar

from triochat.client import Client, parse_url
from triochat.protocol.events import ServerEvent

E = TypeVar("E")


def host_port(url: str) -> tuple[str, int]:
    """The host and port of a ``ws://`` or ``tcp://`` URL, for raw-socket peers."""
    address = parse_url(url)
    return address.host, address.port


async def expect(client: Client, kind: type[E], **fields: Any) -> E:
    """The next event, which must be a ``kind`` with ``fields``."""
    event = await client.receive()
    assert isinstance(event, kind), f"expected {kind.__name__}, got {event!r}"
    for name, value in fields.items():
        assert getattr(event, name) == value, f"{name}: {event!r}"
    return event


async def skip_until(client: Client, kind: type[E], **fields: Any) -> E:
    """Read past other events up to the first ``kind`` matching ``fields``."""
    while True:
        event: ServerEvent = await client.receive()
        if isinstance(event, kind) and all(getattr(event, k) == v for k, v in fields.items()):
            return event


async def settle_join(client: Client) -> None:
    """Consume what a fresh client gets per room: joined, history, members."""
    from triochat.protocol.events import HistoryPage, Joined, Members

    await expect(client, Joined)
    await expect(client, HistoryPage)
    await expect(client, Members)
