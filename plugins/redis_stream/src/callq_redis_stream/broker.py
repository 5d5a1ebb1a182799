"""``redis+stream://host:6379/0?group=callq``: queues on Redis Streams with a consumer group.

One stream per queue (``P:s:QUEUE``), one consumer group (``group``), one consumer name per
broker instance. Publish is XADD (field ``b`` = body); fetch is XREADGROUP ``>`` with COUNT in
a Lua script that replies the ids as one string and the bodies as a flat array (parsing the nested XREADGROUP reply
cost more Python per entry than the round trip), then, when nothing was waiting, XREADGROUP
with BLOCK; ack is XACK + XDEL in the same script, so acked entries do not pile up.

``callq_ack_fetch`` (the consumer sends its waiting acks with its next fetch) acks and reads
in that one script: one round trip per batch of calls.

Recovery: a live consumer's heartbeat re-claims its own pending entries (XCLAIM JUSTID, which
resets their idle time). Entries idle longer than ``0.8 * lease`` therefore belong to a dead
(or stuck) consumer: any live consumer's heartbeat or fetch takes them with XAUTOCLAIM and
re-adds them at the end of the stream (XADD copy, XACK + XDEL of the old entry, in one Lua
script), where every consumer of the group can read them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import ResponseError

from callq.broker import BrokerBase, Capabilities, Delivery, ResultItem
from callq.errors import ConfigError
from callq.results.store import open_store
from callq.url import BrokerURL
from callq_redis._lua import PUT_RESULTS
from callq_redis.broker import REDIS_TICK
from callq_redis.client import HeldScript, RetryingClient
from callq_redis.results import result_args, store_prefix
from callq_redis.state import SharedStateMixin
from callq_redis.topology import TOPOLOGY_PARAMS, open_target

log = logging.getLogger("callq.redis_stream")

KNOWN_PARAMS = ("group", "prefix", "lease", "maxlen", "retry", "socket_timeout", "block", "connect_timeout",
                *TOPOLOGY_PARAMS)
MAX_BLOCK = 1.0
CHUNK = 1000
#: how often (at most) a consumer deletes long-idle consumers without pending entries
CLEANUP_EVERY = 60.0

# Every script gets the stream as KEYS[1] (routes it to the stream's shard on a cluster).
# KEYS: stream.  ARGV: group, consumer, min_idle_ms, count.  Re-adds entries idle past
# min_idle at the end of the stream (whole PEL scanned by cursor, up to 20 rounds); returns how many.
_RECLAIM = r"""
local key, group, cid = KEYS[1], ARGV[1], ARGV[2]
local cursor, n, rounds = '0-0', 0, 0
repeat
  local res = redis.call('XAUTOCLAIM', key, group, cid, ARGV[3], cursor, 'COUNT', ARGV[4])
  cursor = res[1]
  for _, e in ipairs(res[2]) do
    if e then
      if e[2] then
        redis.call('XADD', key, '*', unpack(e[2]))
        n = n + 1
      end
      redis.call('XACK', key, group, e[1])
      redis.call('XDEL', key, e[1])
    end
  end
  rounds = rounds + 1
until cursor == '0-0' or rounds >= 20
return n
"""

# KEYS: stream.  ARGV: group, consumer, count, number of ids, id..., then result records
# (callq_redis's PUT_RESULTS).  Acks and deletes the ids, stores the records, then reads up to
# count new entries without blocking (none if count is 0); replies {'id id ...', body, body...}
# (ids in one string: a reply element costs more Python to parse than a split), body false for an
# entry that is not callq's (not one field 'b').
_ACK_READ = PUT_RESULTS + r"""
local last_ack = 4 + tonumber(ARGV[4])
if last_ack > 4 then
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 5, last_ack))
  redis.call('XDEL', KEYS[1], unpack(ARGV, 5, last_ack))
end
put_results(last_ack + 1)
if ARGV[3] == '0' then return {} end
local res = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'STREAMS', KEYS[1], '>')
if not res then return {} end
local ids, out = {}, {''}
for i, e in ipairs(res[1][2]) do
  local f = e[2]
  ids[i] = e[1]
  if f and #f == 2 and f[1] == 'b' then out[i + 1] = f[2] else out[i + 1] = false end
end
out[1] = table.concat(ids, ' ')
return out
"""

# KEYS: stream.  ARGV: group, id...  Puts entries still pending back at the end of the stream.
_GIVE_BACK = r"""
local key, group = KEYS[1], ARGV[1]
local n = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  if redis.call('XACK', key, group, id) == 1 then
    local e = redis.call('XRANGE', key, id, id)
    if #e > 0 then
      redis.call('XADD', key, '*', unpack(e[1][2]))
      n = n + 1
    end
  end
  redis.call('XDEL', key, id)
end
return n
"""

# KEYS: stream.  ARGV: group, consumer.  Gives back everything the consumer holds, then deletes it.
_RELEASE = r"""
local key, group, cid = KEYS[1], ARGV[1], ARGV[2]
local n = 0
local ok = redis.pcall('XPENDING', key, group, '-', '+', 1, cid)
if type(ok) == 'table' and ok.err then return 0 end
while true do
  local pend = redis.call('XPENDING', key, group, '-', '+', 500, cid)
  if #pend == 0 then break end
  for _, p in ipairs(pend) do
    local id = p[1]
    redis.call('XACK', key, group, id)
    local e = redis.call('XRANGE', key, id, id)
    if #e > 0 then
      redis.call('XADD', key, '*', unpack(e[1][2]))
      n = n + 1
    end
    redis.call('XDEL', key, id)
  end
end
redis.call('XGROUP', 'DELCONSUMER', key, group, cid)
return n
"""

# KEYS: stream.  ARGV: group, consumer.  Deletes the consumer only if it holds nothing.
_DROP_IF_EMPTY = r"""
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) == 0 then
  return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return -1
"""

# KEYS: stream.  A key of another type where the stream belongs (written by other code)
# becomes a stream holding one entry: its content as a JSON array, which the worker dead-letters.
_REPAIR = r"""
local key = KEYS[1]
local t = redis.call('TYPE', key)['ok']
if t == 'stream' or t == 'none' then return 0 end
local content
if t == 'string' then content = redis.call('GET', key)
elseif t == 'hash' then content = redis.call('HGETALL', key)
elseif t == 'set' then content = redis.call('SMEMBERS', key)
elseif t == 'zset' then content = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
elseif t == 'list' then content = redis.call('LRANGE', key, 0, -1)
else content = t end
redis.call('DEL', key)
redis.call('XADD', key, '*', 'b', cjson.encode({'redis key ' .. key .. ' is a ' .. t .. ', callq expected a stream', content}))
return 1
"""

# KEYS: stream.  ARGV: group.  Waiting = entries in the stream minus those pending (acked ones are deleted).
_SIZE = r"""
local len = redis.call('XLEN', KEYS[1])
local pend = redis.pcall('XPENDING', KEYS[1], ARGV[1])
if type(pend) == 'table' and not pend.err then len = len - tonumber(pend[1]) end
if len < 0 then return 0 end
return len
"""

# KEYS: stream.  ARGV: group.  Deletes the entries not yet delivered to the group.
_PURGE = r"""
local key, group = KEYS[1], ARGV[1]
if redis.call('EXISTS', key) == 0 then return 0 end
local last = nil
local groups = redis.call('XINFO', 'GROUPS', key)
for _, g in ipairs(groups) do
  local name, lid = nil, nil
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] end
    if g[i] == 'last-delivered-id' then lid = g[i + 1] end
  end
  if name == group then last = lid end
end
local start = '-'
if last then start = '(' .. last end
local n = 0
while true do
  local entries = redis.call('XRANGE', key, start, '+', 'COUNT', 1000)
  if #entries == 0 then break end
  local ids = {}
  for _, e in ipairs(entries) do table.insert(ids, e[1]) end
  redis.call('XDEL', key, unpack(ids))
  n = n + #ids
  start = '(' .. ids[#ids]
end
return n
"""


class RedisStreamBroker(SharedStateMixin, BrokerBase):
    """Queues on Redis Streams; see the module docstring and docs/brokers/redis_stream.md."""

    # Redis keys are binary-safe strings up to 512 MB
    max_queue_name = 10_000
    queue_name_rule = "no control characters"

    def __init__(self, url: BrokerURL) -> None:
        super().__init__(url)
        url.check_params(KNOWN_PARAMS)
        self.group = url.str_param("group", "callq")
        self.prefix = url.str_param("prefix", "callq")
        self._results_prefix = store_prefix(url)
        if not self.group or not self.prefix:
            raise ConfigError(f"broker URL {url}: group and prefix must not be empty")
        lease = url.float_param("lease", 10.0, minimum=1.0)
        self.lease = lease
        self.heartbeat_interval = lease / 5  # type: ignore[misc]  # per instance, from the URL
        self.min_idle_ms = int((lease - self.heartbeat_interval) * 1000)
        maxlen = url.int_param("maxlen", 0, minimum=0)
        self.maxlen: int | None = maxlen or None
        if self.maxlen:
            log.warning("broker URL %s: maxlen=%d trims the stream approximately; entries not yet "
                        "read (or not yet acked) can be dropped when the backlog exceeds it", url, maxlen)
        self.block = url.float_param("block", MAX_BLOCK, minimum=0.01)
        socket_timeout = url.float_param("socket_timeout", 10.0, minimum=0.5)
        if socket_timeout <= self.block + 1:
            raise ConfigError(f"broker URL {url}: socket_timeout must exceed block + 1 second")
        self.capabilities = Capabilities(
            acks=True,
            persistent=False,  # depends on the server's AOF/RDB settings: not claimed
            distributed=True,
            backlog=True,
            native_delay=False,
            priority=False,
            exact_size=self.maxlen is None,
            shared_state=True,
            redelivery_timeout=lease,
        )
        self.target = open_target(url, socket_timeout=socket_timeout)
        self.client = self.target.client
        connect_timeout = url.float_param("connect_timeout", 5.0, minimum=0.1)
        self.rc = RetryingClient(self.target, url, url.float_param("retry", 60.0), connect_timeout)
        self.rc.connect()  # unreachable, wrong password or DB: a clear error now
        self.consumer_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:10]}"
        self._ack_read = HeldScript(self.client, _ACK_READ)  # the fetch lanes' acks and reads, no pool checkout
        self._reclaim = self.client.register_script(_RECLAIM)
        self._give_back = self.client.register_script(_GIVE_BACK)
        self._release = self.client.register_script(_RELEASE)
        self._drop_if_empty = self.client.register_script(_DROP_IF_EMPTY)
        self._size = self.client.register_script(_SIZE)
        self._purge = self.client.register_script(_PURGE)
        self._repair = self.client.register_script(_REPAIR)
        self._lock = threading.Lock()
        self._held: dict[str, set[bytes]] = {}  # queue -> ids handed out, not yet acked
        self._groups: set[str] = set()  # queues whose group we created (or found)
        self._suspect: set[str] = set()  # queues where a read's reply may have been lost
        self._next_maintenance = 0.0
        self._next_cleanup = time.monotonic() + CLEANUP_EVERY
        self._closed = False

    def _key(self, queue: str) -> str:
        return f"{self.prefix}:s:{queue}"

    # --- publish -------------------------------------------------------------------------

    def callq_publish(self, queue: str, bodies: Sequence[bytes], delay: float, priority: int | None) -> int:
        if not bodies:
            return 0
        key = self._key(queue)
        trim = {"maxlen": self.maxlen, "approximate": True} if self.maxlen else {}
        if self.target.wait_replicas:  # WAIT for replicas on the connection that wrote
            for start in range(0, len(bodies), CHUNK):
                chunk = bodies[start:start + CHUNK]
                self.rc.call("publish", lambda c=chunk: self.target.write_and_wait(
                    key, lambda pipe: _queue_xadd(pipe, key, c, trim)))
            return len(bodies)
        if len(bodies) == 1:
            body = bodies[0]
            self.rc.call("publish", lambda: self.client.xadd(key, {"b": body}, **trim))
            return 1
        for start in range(0, len(bodies), CHUNK):
            chunk = bodies[start:start + CHUNK]
            self.rc.call("publish", lambda c=chunk: _pipeline_xadd(self.client, key, c, trim))
        return len(bodies)

    # --- fetch ---------------------------------------------------------------------------

    def _ensure_group(self, queue: str, force: bool = False) -> None:
        if queue in self._groups and not force:
            return
        try:
            # id 0: the group also sees what was published before it existed
            self.rc.call("create group", lambda: self.client.xgroup_create(self._key(queue), self.group,
                                                                             id="0", mkstream=True))
        except ResponseError as exc:
            if "WRONGTYPE" in str(exc):
                self._repair_key(queue)
                return self._ensure_group(queue, force=True)
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(queue)

    def _repair_key(self, queue: str) -> None:
        key = self._key(queue)
        if self.rc.call("repair", lambda: self._repair(keys=[key])):
            log.warning("redis %s: %s was not a stream (written by other code); its content is now an "
                        "entry that goes to the dead-letter queue", self.url, key)

    def results_with_acks(self, store_url: str) -> bool:
        """The records of the result store on this broker's own URL (the default store) are
        written by the script that acks and reads: no round trip of their own."""
        return not self.target.cluster and store_url == self.url.raw

    def callq_fetch(self, queue: str, max_n: int, timeout: float) -> list[Delivery]:
        return self._fetch(queue, max_n, timeout, [])

    def callq_ack_fetch(self, deliveries: Sequence[Delivery], queue: str, max_n: int,
                        timeout: float, results: Sequence[ResultItem]) -> list[Delivery]:
        acks = [d.tag for d in deliveries if d.queue == queue]
        if len(acks) != len(deliveries) or len(acks) > CHUNK or max_n <= 0:
            self.callq_ack(deliveries, results)
            acks, results = [], ()
        return self._fetch(queue, max_n, timeout, acks, results)

    def _fetch(self, queue: str, max_n: int, timeout: float, acks: list[bytes],
               results: Sequence[ResultItem] = ()) -> list[Delivery]:
        """``acks``: ids acked (and deleted), ``results``: records stored, by the first read's
        script, before it reads."""
        if max_n <= 0:
            return []
        self._ensure_group(queue)
        if time.monotonic() >= self._next_maintenance:
            self._maintain()
        if queue in self._suspect:
            self._reconcile(queue)
        key = self._key(queue)
        deadline = time.monotonic() + timeout
        while True:
            try:
                out = self._take(queue, key, max_n, acks, results)
                results = ()
                if acks:
                    self._forget(queue, acks)
                    acks = []
                if out or self._closed:
                    return out
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                if remaining <= REDIS_TICK:
                    # Redis ends a BLOCK on its 100 ms timer tick: a short wait is slept here instead,
                    # so the caller (waiting for a held call's due time) gets its answer on time
                    time.sleep(remaining)
                    continue
                out = self._wait(queue, key, max_n, max(1, int(min(remaining - REDIS_TICK, self.block) * 1000)))
                if out:
                    return out
            except ResponseError as exc:
                if "WRONGTYPE" in str(exc):
                    self._repair_key(queue)
                    self._ensure_group(queue, force=True)
                    continue
                if "NOGROUP" not in str(exc):
                    raise
                log.warning("redis %s: group %s of %s is gone (Redis restarted?); creating it again",
                            self.url, self.group, key)
                self._ensure_group(queue, force=True)

    def _take(self, queue: str, key: str, max_n: int, acks: Sequence[bytes] = (),
              results: Sequence[ResultItem] = ()) -> list[Delivery]:
        """Up to ``max_n`` new entries, without blocking (one script call, a flat reply), after
        acking ``acks`` and storing ``results`` in the same script."""
        args = [self.group, self.consumer_id, max_n, len(acks), *acks]
        if results:
            args += result_args(self._results_prefix, results)
        res = self.rc.call("fetch", lambda: self._ack_read(keys=[key], args=args),
                           on_error=lambda: self._suspect.add(queue))
        if queue in self._suspect:
            self._reconcile(queue)
        return self._deliveries(queue, key, res)

    def _deliveries(self, queue: str, key: str, res: list) -> list[Delivery]:
        """The entries of a flat reply of ``_ACK_READ``, recorded as held."""
        if not res or len(res) < 2:
            return []
        ids, bodies = res[0].split(b" "), res[1:]
        if None in bodies:  # entries callq did not write: their fields, for the dead-letter queue
            bodies = [b if b is not None else self._foreign_body(key, i) for i, b in zip(ids, bodies, strict=True)]
        return self._hand_out(queue, [Delivery(b, queue, i) for i, b in zip(ids, bodies, strict=True)
                                      if b is not None])

    def _wait(self, queue: str, key: str, max_n: int, block_ms: int) -> list[Delivery]:
        """Block up to ``block_ms`` for new entries (XREADGROUP BLOCK; a script cannot block)."""
        res = self.rc.call("fetch", lambda: self.client.xreadgroup(
            self.group, self.consumer_id, {key: ">"}, count=max_n, block=block_ms),
            on_error=lambda: self._suspect.add(queue))
        if queue in self._suspect:
            self._reconcile(queue)
        if not res:
            return []
        return self._hand_out(queue, [Delivery(_body(fields, msg_id, key, self.url), queue, msg_id)
                                      for msg_id, fields in res[0][1] if fields is not None])

    def _hand_out(self, queue: str, out: list[Delivery]) -> list[Delivery]:
        if out:
            with self._lock:
                self._held.setdefault(queue, set()).update(d.tag for d in out)
        return out

    def _foreign_body(self, key: str, msg_id: bytes) -> bytes | None:
        entries = self.rc.call("fetch", lambda: self.client.xrange(key, msg_id, msg_id))
        return _body(entries[0][1], msg_id, key, self.url) if entries else None

    def _reconcile(self, queue: str) -> None:
        """Give back entries pending to us that we never handed out (a read whose reply was lost)."""
        self._suspect.discard(queue)
        key = self._key(queue)
        pending = self.rc.call("reconcile", lambda: self.client.xpending_range(
            key, self.group, min="-", max="+", count=100_000, consumername=self.consumer_id))
        with self._lock:
            held = set(self._held.get(queue, ()))
        orphans = [p["message_id"] for p in pending if p["message_id"] not in held]
        if orphans:
            n = self.rc.call("reconcile", lambda: self._give_back(keys=[key], args=[self.group, *orphans]))
            log.warning("redis %s: gave back %d entr(ies) read by a fetch whose reply was lost", self.url, n)

    # --- ack / requeue -------------------------------------------------------------------

    def _by_queue(self, deliveries: Sequence[Delivery]) -> dict[str, list[bytes]]:
        grouped: dict[str, list[bytes]] = {}
        for d in deliveries:
            grouped.setdefault(d.queue, []).append(d.tag)
        return grouped

    def _forget(self, queue: str, ids: list[bytes]) -> None:
        with self._lock:
            held = self._held.get(queue)
            if held:
                held.difference_update(ids)

    def callq_ack(self, deliveries: Sequence[Delivery], results: Sequence[ResultItem]) -> int:
        if results:  # no read to ride on: the store at our URL writes them, before the acks
            open_store(self.url.raw).put_many(results)
        for queue, ids in self._by_queue(deliveries).items():
            key = self._key(queue)
            for start in range(0, len(ids), CHUNK):
                chunk = ids[start:start + CHUNK]
                self.rc.call("ack", lambda c=chunk, k=key: self._ack_read(
                    keys=[k], args=[self.group, self.consumer_id, 0, len(c), *c]))
            self._forget(queue, ids)
        return len(deliveries)

    def callq_requeue(self, deliveries: Sequence[Delivery], delay: float) -> int:
        """Re-add at the end of the stream (no native delay: ``delay`` is not honoured)."""
        n = 0
        for queue, ids in self._by_queue(deliveries).items():
            key = self._key(queue)
            for start in range(0, len(ids), CHUNK):
                chunk = ids[start:start + CHUNK]
                n += self.rc.call("requeue", lambda c=chunk, k=key: self._give_back(keys=[k], args=[self.group, *c]))
            self._forget(queue, ids)
        return n

    # --- heartbeat -----------------------------------------------------------------------

    def _maintain(self) -> int:
        """Renew our pending entries' idle time; re-add entries of dead consumers. Returns re-added."""
        self._next_maintenance = time.monotonic() + self.heartbeat_interval
        recovered = 0
        for queue in list(self._groups):
            key = self._key(queue)
            with self._lock:
                ids = list(self._held.get(queue, ()))
            for start in range(0, len(ids), CHUNK):
                chunk = ids[start:start + CHUNK]
                self.rc.call("heartbeat", lambda c=chunk, k=key: self.client.xclaim(
                    k, self.group, self.consumer_id, 0, c, justid=True))
            try:
                recovered += int(self.rc.call("heartbeat", lambda k=key: self._reclaim(
                    keys=[k], args=[self.group, self.consumer_id, self.min_idle_ms, 500])))
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._groups.discard(queue)  # fetch creates it again
        if recovered:
            log.warning("redis %s: re-added %d entr(ies) of dead consumers", self.url, recovered)
        if time.monotonic() >= self._next_cleanup:
            self._next_cleanup = time.monotonic() + CLEANUP_EVERY
            self._drop_idle_consumers()
        return recovered

    def _drop_idle_consumers(self) -> None:
        """Delete consumers idle for 10 leases that hold nothing (dead workers' names)."""
        limit_ms = 10 * self.lease * 1000
        for queue in list(self._groups):
            key = self._key(queue)
            try:
                consumers = self.rc.call("cleanup", lambda k=key: self.client.xinfo_consumers(k, self.group))
            except ResponseError:
                continue
            for c in consumers:
                if c["pending"] == 0 and c["idle"] > limit_ms:
                    self.rc.call("cleanup", lambda k=key, name=c["name"]: self._drop_if_empty(
                        keys=[k], args=[self.group, name]))

    def callq_heartbeat(self) -> int:
        if self._closed:
            return 0
        return self._maintain()

    # --- size / purge / close ------------------------------------------------------------

    def callq_size(self, queue: str) -> int:
        return int(self.rc.call("size", lambda: self._size(keys=[self._key(queue)], args=[self.group])))

    def callq_purge(self, queue: str) -> int:
        return int(self.rc.call("purge", lambda: self._purge(keys=[self._key(queue)], args=[self.group])))

    def callq_close(self) -> bool:
        if self._closed:
            return True
        self._closed = True
        try:
            self.rc.retry_for = min(self.rc.retry_for, 5.0)
            n = 0
            for queue in list(self._groups):
                n += int(self.rc.call("close", lambda q=queue: self._release(
                    keys=[self._key(q)], args=[self.group, self.consumer_id])))
            if n:
                log.info("redis %s: gave back %d unacked entr(ies) on close", self.url, n)
        except Exception as exc:  # noqa: BLE001 - closing must not raise; the lease covers it
            log.warning("redis %s: could not give back unacked entries on close (%s); "
                        "live consumers recover them within %.0fs", self.url, exc, self.lease)
        finally:
            self._ack_read.close()
            self.rc.close()
        return True

    def __repr__(self) -> str:
        return f"RedisStreamBroker({str(self.url)!r}, group={self.group!r}, consumer={self.consumer_id!r})"


def _queue_xadd(pipe: Any, key: str, bodies: Sequence[bytes], trim: dict[str, Any]) -> None:
    for body in bodies:
        pipe.xadd(key, {"b": body}, **trim)


def _body(fields: dict[bytes, bytes], msg_id: bytes, key: str, url: BrokerURL) -> bytes:
    """The entry's body; for an entry callq did not write (no field ``b``) a JSON rendering of
    all its fields that core cannot take for a call, so it is dead-lettered with its content."""
    body = fields.get(b"b")
    if body is not None and len(fields) == 1:
        return body
    log.warning("redis %s: entry %s of %s is not callq's (fields %s, expected only 'b'); it goes to "
                "the dead-letter queue", url, msg_id.decode(), key,
                ", ".join(repr(f.decode(errors="replace")) for f in list(fields)[:5]))
    rendered = {f.decode(errors="backslashreplace"): v.decode(errors="backslashreplace") for f, v in fields.items()}
    return json.dumps([f"redis stream entry {msg_id.decode()} of {key} has no single field 'b'", rendered],
                      ensure_ascii=False).encode()


def _pipeline_xadd(client: redis.Redis, key: str, bodies: Sequence[bytes], trim: dict[str, Any]) -> None:
    pipe = client.pipeline(transaction=False)
    _queue_xadd(pipe, key, bodies, trim)
    pipe.execute()
