"""The one door to Redis (or Valkey): a URL, the functions triochat runs there, and
the calls a node makes, over valkey-glide.

Nothing else in triochat imports the client library: the choice stays behind this
small interface (see docs/scaling.md for why valkey-glide and not coredis: in a
restart test under Trio it came back subscribed every time).

Every room operation is one Redis Function of the ``triochat`` library below, so
what must be atomic is (a room event's seq, its stream entry, its members and its
publication), and every function touches the keys of one hash tag only, so the
same calls work on a Redis Cluster. Calls go in pipelined batches
(:meth:`Bus.batch`); each call's result, or the error it met, comes back in order.

Keys (``K`` a room's or nick's key, ``ID`` a node's id):

* ``tc:{r:K}:m`` a room's meta hash (``s`` its last seq, ``e`` its epoch, ``n`` its
  name, ``t`` its topic if it has one), ``tc:{r:K}:l`` its stream (entry ids
  ``<seq>-0``, field ``l`` the line),
  ``tc:{r:K}:u`` its members (nick key → ``ID\\nSEQ\\nnick``, SEQ that of its
  ``joined``, so every node lists members in join order), ``tc:{r:K}:c`` its channel.
  A channel message is ``<seq> <epoch> <line>...``: one or more lines (each ending
  in a newline), with consecutive seqs from ``<seq>``.
* ``tc:{a:K}`` a registered nick's account, ``tc:accounts`` every account's key.
* ``tc:{n:K}`` a nick's lease: ``ID\\nnick``, expiring unless its node renews it.
* ``tc:{d:ID}:live`` a node's lease, ``tc:{d:ID}:rooms`` the rooms it has members
  in, ``tc:{d:ID}:nicks`` its nicks (key → nick), ``tc:{d:ID}:c`` its channel (DMs);
  ``tc:nodes`` every node's id, ``tc:id`` the shared history's id, ``tc:nicks`` the
  channel of nick changes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

from glide import (
    AdvancedGlideClientConfiguration,
    AdvancedGlideClusterClientConfiguration,
    BackoffStrategy,
    Batch,
    ClusterBatch,
    GlideClient,
    GlideClientConfiguration,
    GlideClusterClient,
    GlideClusterClientConfiguration,
    GlideError,
    Logger,
    LogLevel,
    NodeAddress,
    ServerCredentials,
    TlsAdvancedConfiguration,
)

from triochat.errors import RedisError
from triochat.server.redis_url import RedisTarget

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_MS = 5000
"""How long one call or batch may take, reconnecting included, before it fails."""
RESUBSCRIBE_MS = 1000
"""How often the library checks its subscriptions against the server's, so a lost one
comes back within about this (its default, 3 s, was what a restart took here)."""

LIBRARY = r"""#!lua name=triochat

local function publish(channel, payload, sharded)
  if sharded == '1' then
    redis.call('SPUBLISH', channel, payload)
  else
    redis.call('PUBLISH', channel, payload)
  end
end

-- Room events, in order. KEYS: meta, log, members, channel. ARGV: the node's
-- settings ("retention\nnode\nsharded"), then per event: prefix, suffix (its line
-- around its seq), what ("m", or "j\nnick key\nnick\nroom name", "l\n..." alike, or
-- "t\nroom name\ntopic": the room's topic is set, or cleared when empty, with its event).
-- A leave by a node the member does not belong to is no event. Returns each
-- event's seq (0: no event). The events get consecutive seqs and go out as one
-- publication: "<first seq> <epoch> <line><line>...", each line ending in \n.
-- A room made here gets an epoch of its maker's node and Redis's clock.
redis.register_function('tc_event', function(keys, args)
  local retention, node, sharded = string.match(args[1], '^(%d+)\n([^\n]*)\n(%d)$')
  local epoch = redis.call('HGET', keys[1], 'e')
  local seqs, lines, first = {}, {}, nil
  for i = 2, #args, 3 do
    local kind, who, nick, name, topic = args[i + 2], '', '', '', ''
    if string.sub(kind, 1, 1) == 't' then
      kind, name, topic = string.match(kind, '^(t)\n([^\n]*)\n(.*)$')
    elseif #kind > 1 then
      kind, who, nick, name = string.match(kind, '^(.)\n([^\n]*)\n([^\n]*)\n(.*)$')
    end
    local held = kind == 'l' and redis.call('HGET', keys[3], who)
    if kind == 'l' and (not held or string.sub(held, 1, #node + 1) ~= node .. '\n') then
      table.insert(seqs, 0)
    else
      if not epoch then
        local now = redis.call('TIME')
        epoch = node .. '.' .. now[1] .. '.' .. now[2]
        redis.call('HSET', keys[1], 'e', epoch, 'n', name)
        redis.call('DEL', keys[2])
      end
      local seq = redis.call('HINCRBY', keys[1], 's', 1)
      local line = args[i] .. seq .. args[i + 1]
      redis.call('XADD', keys[2], 'MAXLEN', retention, seq .. '-0', 'l', line)
      if kind == 'j' then
        redis.call('HSET', keys[3], who, node .. '\n' .. seq .. '\n' .. nick)
      elseif kind == 'l' then
        redis.call('HDEL', keys[3], who)
      elseif kind == 't' and topic == '' then
        redis.call('HDEL', keys[1], 't')
      elseif kind == 't' then
        redis.call('HSET', keys[1], 't', topic)
      end
      first = first or seq
      table.insert(seqs, seq)
      table.insert(lines, line)
    end
  end
  if first then
    publish(keys[4], first .. ' ' .. epoch .. ' ' .. table.concat(lines), sharded)
  end
  return seqs
end)

-- A room as it is now, in one step. KEYS: meta, log, members. ARGV: how many
-- events. Returns epoch, last seq, name, members (flat), newest events (flat:
-- seq, line, ... newest first), topic ('' for none).
redis.register_function{function_name='tc_load', flags={'no-writes'}, callback=function(keys, args)
  local meta = redis.call('HMGET', keys[1], 'e', 's', 'n', 't')
  local events = {}
  for _, entry in ipairs(redis.call('XREVRANGE', keys[2], '+', '-', 'COUNT', args[1])) do
    table.insert(events, string.match(entry[1], '^(%d+)'))
    table.insert(events, entry[2][2])
  end
  return {meta[1] or '', meta[2] or '0', meta[3] or '', redis.call('HGETALL', keys[3]), events,
    meta[4] or ''}
end}

-- A room's epoch, last seq and name. KEYS: meta.
redis.register_function{function_name='tc_top', flags={'no-writes'}, callback=function(keys, args)
  local meta = redis.call('HMGET', keys[1], 'e', 's', 'n')
  return {meta[1] or '', meta[2] or '0', meta[3] or ''}
end}

-- A room's events with first <= seq <= last, flat (seq, line, ...). KEYS: log.
redis.register_function{function_name='tc_range', flags={'no-writes'}, callback=function(keys, args)
  local events = {}
  for _, entry in ipairs(redis.call('XRANGE', keys[1], args[1] .. '-0', args[2] .. '-0')) do
    table.insert(events, string.match(entry[1], '^(%d+)'))
    table.insert(events, entry[2][2])
  end
  return events
end}

-- A room's members, flat (key, node\nseq\nnick, ...). KEYS: members.
redis.register_function{function_name='tc_roster', flags={'no-writes'},
  callback=function(keys, args) return redis.call('HGETALL', keys[1]) end}

-- A room's members (as tc_roster) and topic ('' for none). KEYS: members, meta.
redis.register_function{function_name='tc_who', flags={'no-writes'}, callback=function(keys, args)
  return {redis.call('HGETALL', keys[1]), redis.call('HGET', keys[2], 't') or ''}
end}

-- A room as a room list shows it: name, how many members, topic ('' for none).
-- KEYS: meta, members.
redis.register_function{function_name='tc_info', flags={'no-writes'}, callback=function(keys, args)
  local meta = redis.call('HMGET', keys[1], 'n', 't')
  return {meta[1] or '', redis.call('HLEN', keys[2]), meta[2] or ''}
end}

-- Take a nick for a lease of ARGV[2] ms: 1, or 0 if another holds it. KEYS: nick.
-- ARGV: holder (node\nnick). Its own holder takes it again.
redis.register_function('tc_claim', function(keys, args)
  if redis.call('SET', keys[1], args[1], 'NX', 'PX', args[2]) then
    return 1
  end
  if redis.call('GET', keys[1]) == args[1] then
    redis.call('PEXPIRE', keys[1], args[2])
    return 1
  end
  return 0
end)

-- Renew a nick's lease if ARGV[1] still holds it: 1, else 0. KEYS: nick.
redis.register_function('tc_renew', function(keys, args)
  if redis.call('GET', keys[1]) == args[1] then
    redis.call('PEXPIRE', keys[1], args[2])
    return 1
  end
  return 0
end)

-- Free a nick if ARGV[1] holds it. KEYS: nick.
redis.register_function('tc_release', function(keys, args)
  if redis.call('GET', keys[1]) == args[1] then
    redis.call('DEL', keys[1])
  end
  return 1
end)

-- Keep an index: ARGV op (add, rem: a set; put, del: a hash), member[, value]. KEYS: it.
redis.register_function('tc_index', function(keys, args)
  local op = args[1]
  if op == 'add' then
    redis.call('SADD', keys[1], args[2])
  elseif op == 'rem' then
    redis.call('SREM', keys[1], args[2])
  elseif op == 'put' then
    redis.call('HSET', keys[1], args[2], args[3])
  else
    redis.call('HDEL', keys[1], args[2])
  end
  return 1
end)

-- Move a member of a room to a new nick, keeping its place (the seq it joined
-- at). KEYS: members. ARGV: old key, new key, node, nick.
redis.register_function('tc_rename', function(keys, args)
  local held = redis.call('HGET', keys[1], args[1])
  if held then
    local joined = string.match(held, '^[^\n]*\n([^\n]*)\n')
    redis.call('HDEL', keys[1], args[1])
    redis.call('HSET', keys[1], args[2], args[3] .. '\n' .. joined .. '\n' .. args[4])
  end
  return 1
end)

-- Publish ARGV[2] on channel ARGV[1] (node-wide news: nick changes).
redis.register_function('tc_publish', function(keys, args)
  redis.call('PUBLISH', args[1], args[2])
  return 1
end)

-- Accounts (registered nicks). KEYS: the account's hash (n: nick as registered,
-- h: password hash, t: when). tc_account_add: 0 if it exists; tc_account_set and
-- tc_account_del: 0 if it does not.
redis.register_function{function_name='tc_account', flags={'no-writes'},
  callback=function(keys, args) return redis.call('HMGET', keys[1], 'n', 'h') end}

redis.register_function('tc_account_add', function(keys, args)
  if redis.call('EXISTS', keys[1]) == 1 then
    return 0
  end
  redis.call('HSET', keys[1], 'n', args[1], 'h', args[2], 't', args[3])
  return 1
end)

redis.register_function('tc_account_set', function(keys, args)
  if redis.call('EXISTS', keys[1]) == 0 then
    return 0
  end
  redis.call('HSET', keys[1], 'h', args[1])
  return 1
end)

redis.register_function('tc_account_del', function(keys, args)
  return redis.call('DEL', keys[1])
end)

-- A direct message to whoever holds the nick: its nick as shown, 0 if nobody holds it. KEYS: nick.
-- ARGV: prefix, suffix (the line around its "to" value), the nick's key.
redis.register_function('tc_dm', function(keys, args)
  local held = redis.call('GET', keys[1])
  if not held then
    return 0
  end
  local cut = string.find(held, '\n', 1, true)
  local node, nick = string.sub(held, 1, cut - 1), string.sub(held, cut + 1)
  local line = args[1] .. cjson.encode(nick) .. args[2]
  redis.call('PUBLISH', 'tc:{d:' .. node .. '}:c', 'd\n' .. args[3] .. '\n' .. line)
  return nick
end)
"""


class Call(NamedTuple):
    """One function call: its name, its keys (one hash tag) and its arguments."""

    function: str
    keys: list[str]
    args: list[str | bytes]


Failed = GlideError
"""What a call in a batch gives instead of its result when it failed."""


class Bus:
    """Two connections to Redis: one for calls, one that only listens.

    ``sharded``: a cluster, where room channels are shard channels.
    """

    def __init__(
        self,
        target: RedisTarget,
        calls: GlideClient | GlideClusterClient,
        listener: GlideClient | GlideClusterClient,
    ) -> None:
        self.target = target
        self._calls = calls
        self._listener = listener
        self.sharded = isinstance(calls, GlideClusterClient)

    @classmethod
    async def connect(
        cls, target: RedisTarget, *, cluster: bool, cafile: str | None = None, debug: bool = False
    ) -> Bus:
        """Connect twice and load the functions; :class:`RedisError` if Redis can't be used.

        ``cafile``: the CA certificates (PEM) a ``rediss://`` server's is checked against,
        instead of the system's."""
        Logger.set_logger_config(LogLevel.WARN if debug else LogLevel.OFF)
        cas = _read_cafile(cafile)
        try:
            calls = await _client(target, cluster, cas)
            listener = await _client(target, cluster, cas)
        except GlideError as exc:
            raise RedisError(f"cannot connect to redis {target.shown}: {exc}") from None
        bus = cls(target, calls, listener)
        try:
            await calls.function_load(LIBRARY, replace=True)
        except GlideError as exc:
            await bus.close()
            raise RedisError(
                f"redis {target.shown} refused triochat's functions (Redis 7 or Valkey"
                f" needed): {exc}"
            ) from None
        return bus

    async def close(self) -> None:
        for client in (self._calls, self._listener):
            with contextlib.suppress(GlideError):
                await client.close()

    async def batch(self, calls: Sequence[Call]) -> list[Any]:
        """Run ``calls`` pipelined, in order; each gives its result or a :data:`Failed`.

        If the batch as a whole fails (Redis unreachable), every call gets that error.
        """
        batch: Batch | ClusterBatch = (
            ClusterBatch(is_atomic=False) if self.sharded else Batch(is_atomic=False)
        )
        for call in calls:
            batch.fcall(call.function, keys=call.keys, arguments=call.args)
        try:
            if isinstance(self._calls, GlideClusterClient):
                assert isinstance(batch, ClusterBatch)
                results = await self._calls.exec(batch, raise_on_error=False)
            else:
                assert isinstance(batch, Batch)
                results = await self._calls.exec(batch, raise_on_error=False)
        except GlideError as exc:
            return [exc] * len(calls)
        if results is None:
            return [RedisError("the batch was not run")] * len(calls)
        return list(results)

    async def call(self, call: Call) -> Any:
        """One call; :class:`RedisError` if it failed."""
        result = (await self.batch([call]))[0]
        if isinstance(result, Exception):
            raise RedisError(f"redis {call.function}: {result}")
        return result

    async def command(self, *args: str) -> Any:
        """A plain command (on a cluster, routed by its first key); :class:`RedisError`."""
        try:
            return await self._calls.custom_command(list(args))
        except GlideError as exc:
            raise RedisError(f"redis {args[0]}: {exc}") from None

    async def subscribe(self, channels: set[str], *, sharded: bool) -> None:
        if not channels:
            return
        try:
            if sharded and isinstance(self._listener, GlideClusterClient):
                await self._listener.ssubscribe(channels, timeout_ms=REQUEST_TIMEOUT_MS)
            else:
                await self._listener.subscribe(channels, timeout_ms=REQUEST_TIMEOUT_MS)
        except GlideError as exc:
            raise RedisError(f"redis subscribe: {exc}") from None

    async def unsubscribe(self, channels: set[str], *, sharded: bool) -> None:
        if not channels:
            return
        try:
            if sharded and isinstance(self._listener, GlideClusterClient):
                await self._listener.sunsubscribe(channels, timeout_ms=REQUEST_TIMEOUT_MS)
            else:
                await self._listener.unsubscribe(channels, timeout_ms=REQUEST_TIMEOUT_MS)
        except GlideError as exc:
            raise RedisError(f"redis unsubscribe: {exc}") from None

    async def messages(self) -> list[tuple[bytes, bytes]]:
        """What was heard on the subscribed channels, oldest first: (channel, payload)
        pairs, at least one. Everything the library already holds comes at once, so a
        burst is handed on (and fanned out, and flushed) in one scheduler turn.

        Only one task may wait here, and only cancelling it at the end is safe: the
        library hands a message to the waiter that asked first, even one cancelled.
        """
        heard = [await self._listener.get_pubsub_message()]
        while (more := self._listener.try_get_pubsub_message()) is not None:
            heard.append(more)
        return [(_bytes(got.channel), _bytes(got.message)) for got in heard]


def as_text(value: object) -> str:
    """A reply's value as text: bytes decoded, nil (None) empty."""
    if isinstance(value, bytes):
        return value.decode()
    return "" if value is None else str(value)


def _bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _read_cafile(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as pem:
            return pem.read()
    except OSError as exc:
        raise RedisError(f"cannot read the Redis CA file {path}: {exc.strerror}") from None


async def _client(
    target: RedisTarget, cluster: bool, cas: bytes | None
) -> GlideClient | GlideClusterClient:
    address = (
        NodeAddress(unix_socket_path=target.path)
        if target.path is not None
        else NodeAddress(target.host, target.port)
    )
    credentials = (
        ServerCredentials(password=target.password, username=target.username)
        if target.password is not None
        else None
    )
    retry = BackoffStrategy(num_of_retries=8, factor=50, exponent_base=2)
    tls = TlsAdvancedConfiguration(root_pem_cacerts=cas) if cas is not None else None
    common: dict[str, Any] = {
        "use_tls": target.tls,
        "credentials": credentials,
        "request_timeout": REQUEST_TIMEOUT_MS,
        "reconnect_strategy": retry,
    }
    if cluster:
        advanced = AdvancedGlideClusterClientConfiguration(
            tls_config=tls, pubsub_reconciliation_interval=RESUBSCRIBE_MS
        )
        return await GlideClusterClient.create(
            GlideClusterClientConfiguration([address], advanced_config=advanced, **common)
        )
    return await GlideClient.create(
        GlideClientConfiguration(
            [address],
            database_id=target.db,
            advanced_config=AdvancedGlideClientConfiguration(
                tls_config=tls, pubsub_reconciliation_interval=RESUBSCRIBE_MS
            ),
            **common,
        )
    )
