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

from redis.exceptions import ResponseError

from callq.broker import BrokerBase, Capabilities, Delivery, ResultItem
from callq.errors import ConfigError
from callq.results.store import open_store
from callq.url import BrokerURL
from callq_redis.broker import REDIS_TICK
from callq_redis.client import HeldScript, RetryingClient
from callq_redis.results import result_args, store_prefix
from callq_redis.state import SharedStateMixin
from callq_redis.topology import TOPOLOGY_PARAMS, open_target

from . import _lua
from .keys import CHUNK
from .publish import StreamPublishing
from .recovery import CLEANUP_EVERY, StreamRecovery

log = logging.getLogger("callq.redis_stream")

KNOWN_PARAMS = ("group", "prefix", "lease", "maxlen", "retry", "socket_timeout", "block", "connect_timeout",
                *TOPOLOGY_PARAMS)
MAX_BLOCK = 1.0


class RedisStreamBroker(StreamPublishing, StreamRecovery, SharedStateMixin, BrokerBase):
    """Queues on Redis Streams; see the module docstring and docs/brokers/redis_stream.md.

    This class reads the URL, fetches and acks. Publishing is in publish.py; the group's upkeep,
    lost-reply orphans, requeue, heartbeat and close in recovery.py; the scripts in _lua.py.
    """

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
        self._ack_read = HeldScript(self.client, _lua.ACK_READ)  # the fetch lanes' acks and reads, no pool checkout
        self._reclaim = self.client.register_script(_lua.RECLAIM)
        self._give_back = self.client.register_script(_lua.GIVE_BACK)
        self._release = self.client.register_script(_lua.RELEASE)
        self._drop_if_empty = self.client.register_script(_lua.DROP_IF_EMPTY)
        self._size = self.client.register_script(_lua.SIZE)
        self._purge = self.client.register_script(_lua.PURGE)
        self._repair = self.client.register_script(_lua.REPAIR)
        self._lock = threading.Lock()
        self._held: dict[str, set[bytes]] = {}  # queue -> ids handed out, not yet acked
        self._groups: set[str] = set()  # queues whose group we created (or found)
        self._suspect: set[str] = set()  # queues where a read's reply may have been lost
        self._next_maintenance = 0.0
        self._next_cleanup = time.monotonic() + CLEANUP_EVERY
        self._closed = False

    # --- fetch ---------------------------------------------------------------------------

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
        """The entries of a flat reply of ``_lua.ACK_READ``, recorded as held."""
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

    # --- ack -----------------------------------------------------------------------------

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

    # --- size / purge --------------------------------------------------------------------

    def callq_size(self, queue: str) -> int:
        return int(self.rc.call("size", lambda: self._size(keys=[self._key(queue)], args=[self.group])))

    def callq_purge(self, queue: str) -> int:
        return int(self.rc.call("purge", lambda: self._purge(keys=[self._key(queue)], args=[self.group])))

    def __repr__(self) -> str:
        return f"RedisStreamBroker({str(self.url)!r}, group={self.group!r}, consumer={self.consumer_id!r})"


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
