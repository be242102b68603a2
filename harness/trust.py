"""The CA a harness run trusts for ``wss://`` and ``tls://`` servers (``--cafile``).

One setting for every connection the run opens, the client library's
(:class:`harness.fleet.Fleet`) and the hand-driven ones (:mod:`harness.raw`):
set once by :func:`harness.runner.run_harness` for the run's tasks, which
inherit it, and read where connections are made. None: the system's CAs.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from typing import Any

from triochat import client
from triochat.client import Client

CAFILE: ContextVar[str | None] = ContextVar("harness_cafile", default=None)


def open_client(url: str, nick: str, **options: Any) -> AbstractAsyncContextManager[Client]:
    """:func:`triochat.client.open_client`, trusting the run's CA: every harness client's door."""
    return client.open_client(url, nick, cafile=CAFILE.get(), **options)
