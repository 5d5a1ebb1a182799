"""Giving messages back to their queue: requeue, orphans of a claim whose reply was lost,
dead consumers' messages (heartbeat), and everything this consumer holds on close."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from redis.commands.core import Script

from callq.broker import Delivery
from callq.errors import BrokerError
from callq.url import BrokerURL

from .client import HeldConnection, HeldScript, RetryingClient
from .keys import CHUNK, QueueKeys

log = logging.getLogger("callq.redis")


class ListRecovery(QueueKeys):
    """Mixin of :class:`~callq_redis.broker.RedisBroker`: ``callq_requeue``, ``callq_heartbeat``,
    ``callq_close`` and ``_reconcile`` (called by a claim after a lost reply)."""

    url: BrokerURL
    mode: str
    lease: float
    dead_after_ms: int
    client: Any
    rc: RetryingClient
    _held: HeldConnection
    _claim: HeldScript
    _requeue: Script
    _lmove_requeue: Script
    _heartbeat: Script
    _release: Script
    _release_fields: Script
    _lock: threading.Lock
    _held_fields: dict[str, set[bytes]]
    _held_bodies: Counter[tuple[str, bytes]]
    _suspect: set[str]
    _queues: set[str]
    _closed: bool

    if TYPE_CHECKING:  # the broker's own
        def callq_publish(self, queue: str, bodies: Sequence[bytes], delay: float, priority: int | None) -> int: ...
        def _forget_bodies(self, deliveries: Sequence[Delivery]) -> None: ...

    def _reconcile(self, queue: str) -> None:
        """Give back what our in-flight structures hold but we never handed out (lost replies)."""
        self._suspect.discard(queue)
        b = self._base(queue)
        n = 0
        if self.mode == "reliable":
            with self._lock:
                held_f = set(self._held_fields.get(queue, ()))
            h = self._own(queue, "inflight")
            orphans = [f for f in self.rc.call("reconcile", lambda: self.client.hkeys(h)) if f not in held_f]
            for start in range(0, len(orphans), CHUNK):
                chunk = orphans[start:start + CHUNK]
                n += self.rc.call("reconcile", lambda c=chunk: self._release_fields(
                    keys=[h, f"{b}:q", f"{b}:levels"], args=[b, self.consumer_id, *c]))
        else:
            with self._lock:
                held_b = Counter(self._held_bodies)
            proc = self._own(queue, "proc")
            items = Counter(self.rc.call("reconcile", lambda: self.client.lrange(proc, 0, -1)))
            for body, count in items.items():
                extra = count - held_b.get((queue, body), 0)
                if extra > 0:
                    n += self.rc.call("reconcile", lambda bd=body, k=extra: self._lmove_requeue(
                        keys=[proc, f"{b}:q", f"{b}:delayed", f"{b}:seq"], args=[b, self.consumer_id, 0, *([bd] * k)]))
        if n:
            log.warning("redis %s: gave back %d message(s) claimed by a fetch whose reply was lost", self.url, n)

    def callq_requeue(self, deliveries: Sequence[Delivery], delay: float) -> int:
        if not deliveries:
            return 0
        delay_ms = max(0, int(delay * 1000))
        if self.mode == "fast":  # already gone from Redis: publish again
            for queue, bodies in self._by_queue(deliveries, tags=False).items():
                self.callq_publish(queue, bodies, delay, None)
            return len(deliveries)
        n = 0
        reliable = self.mode == "reliable"
        for queue, items in self._by_queue(deliveries, tags=reliable).items():
            b = self._base(queue)
            own = self._own(queue, "inflight" if reliable else "proc")
            keys = [own, f"{b}:q", f"{b}:levels", f"{b}:delayed", f"{b}:seq"]
            script = self._requeue if reliable else self._lmove_requeue
            for start in range(0, len(items), CHUNK):
                chunk = items[start:start + CHUNK]
                n += self.rc.call("requeue", lambda c=chunk, s=script, k=keys, bb=b: s(
                    keys=k, args=[bb, self.consumer_id, delay_ms, *c]))
            if reliable:
                with self._lock:
                    self._held_fields.get(queue, set()).difference_update(items)
        if not reliable:
            self._forget_bodies(deliveries)
        return n

    def callq_heartbeat(self) -> int:
        """Renew this consumer's score on its queues; give back the messages of silent consumers."""
        if self.mode == "fast":
            return 0
        register = 0 if self._closed else 1
        total = 0
        for queue in list(self._queues):
            b = self._base(queue)
            while True:
                recovered, dead = self.rc.call("heartbeat", lambda b=b: self._heartbeat(
                    keys=[f"{b}:consumers"], args=[b, self.consumer_id, self.dead_after_ms, register]))
                total += int(recovered)
                if int(dead) < 50:
                    break
        if total:
            log.warning("redis %s: gave back %d message(s) of dead consumers", self.url, total)
        return total

    def callq_close(self) -> bool:
        if self._closed:
            return True
        self._closed = True
        try:
            self.rc.retry_for = min(self.rc.retry_for, 5.0)
            n = 0
            for queue in list(self._queues):
                b = self._base(queue)
                n += self.rc.call("close", lambda b=b, q=queue: self._release(
                    keys=[f"{b}:consumers", self._own(q, "inflight"), self._own(q, "proc"), f"{b}:q"],
                    args=[b, self.consumer_id]))
            if n:
                log.info("redis %s: gave back %d unacked message(s) on close", self.url, n)
        except BrokerError as exc:
            log.warning("redis %s: could not give back unacked messages on close (%s); "
                        "live consumers recover them within %.0fs", self.url, exc, self.lease)
        finally:
            self._held.close()
            self._claim.close()
            self.rc.close()
        return True
