"""Keeping a queue's stream usable and giving entries back: the consumer group (created
again after a Redis restart, a key of another type repaired), entries of a read whose reply
was lost, requeue, the heartbeat (our entries renewed, dead consumers' entries re-added, idle
consumers deleted), and everything this consumer holds on close."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from redis.commands.core import Script
from redis.exceptions import ResponseError

from callq.broker import Delivery
from callq.url import BrokerURL
from callq_redis.client import HeldScript, RetryingClient

from .keys import CHUNK, StreamKeys

log = logging.getLogger("callq.redis_stream")

#: how often (at most) a consumer deletes long-idle consumers without pending entries
CLEANUP_EVERY = 60.0


class StreamRecovery(StreamKeys):
    """Mixin of :class:`~callq_redis_stream.broker.RedisStreamBroker`: ``callq_requeue``,
    ``callq_heartbeat``, ``callq_close``, and the group and lost-reply upkeep of a fetch."""

    url: BrokerURL
    group: str
    lease: float
    heartbeat_interval: float
    min_idle_ms: int
    consumer_id: str
    client: Any
    rc: RetryingClient
    _ack_read: HeldScript
    _reclaim: Script
    _give_back: Script
    _release: Script
    _drop_if_empty: Script
    _repair: Script
    _lock: threading.Lock
    _held: dict[str, set[bytes]]
    _groups: set[str]
    _suspect: set[str]
    _next_maintenance: float
    _next_cleanup: float
    _closed: bool

    if TYPE_CHECKING:  # the broker's own
        def _forget(self, queue: str, ids: list[bytes]) -> None: ...

    # --- the group -----------------------------------------------------------------------

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

    # --- lost replies, requeue -----------------------------------------------------------

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

    # --- close ---------------------------------------------------------------------------

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
