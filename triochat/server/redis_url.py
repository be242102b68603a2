"""Where Redis is: the ``--redis`` URL, read without loading the client library."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is, from a ``redis://``, ``rediss://`` or ``unix://`` URL."""

    url: str
    host: str = ""
    port: int = 6379
    path: str | None = None
    db: int = 0
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @property
    def shown(self) -> str:
        """The URL with any password masked, for logs and the start-up line."""
        if self.password is None:
            return self.url
        parts = urlsplit(self.url)
        user = f"{parts.username}:" if parts.username else ":"
        host = parts.netloc.rpartition("@")[2]
        return parts._replace(netloc=f"{user}***@{host}").geturl()


def parse_redis_url(url: str) -> RedisTarget:
    """The :class:`RedisTarget` of ``url``; ``ValueError`` saying what is wrong."""
    parts = urlsplit(url)
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError(f"{url!r}: a unix:// URL needs a path (unix:///run/redis.sock)")
        return RedisTarget(url, path=parts.path, username=username, password=password)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"{url!r}: the scheme must be redis://, rediss:// or unix://")
    if not parts.hostname:
        raise ValueError(f"{url!r}: no host")
    db = parts.path.strip("/") or "0"
    try:
        port = parts.port or 6379
        number = int(db)
    except ValueError:
        raise ValueError(f"{url!r}: the port and the database must be numbers") from None
    return RedisTarget(
        url,
        parts.hostname,
        port,
        db=number,
        tls=parts.scheme == "rediss",
        username=username,
        password=password,
    )
