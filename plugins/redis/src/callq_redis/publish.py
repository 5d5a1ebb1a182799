"""Publishing onto a queue's lists: one LPUSH in the common case; delayed messages (a script
into the ``delayed`` zset), priority levels, big batches and ``wait=N`` otherwise."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.commands.core import Script

from .client import HeldConnection, RetryingClient
from .keys import CHUNK, QueueKeys
from .topology import RedisTarget


class ListPublishing(QueueKeys):
    """Mixin of :class:`~callq_redis.broker.RedisBroker`: ``callq_publish``."""

    mode: str
    target: RedisTarget
    client: Any
    rc: RetryingClient
    _held: HeldConnection
    _publish_delayed: Script
    _queue_keys: dict[str, str]

    def callq_publish(self, queue: str, bodies: Sequence[bytes], delay: float, priority: int | None) -> int:
        if not priority and delay <= 0 and len(bodies) <= CHUNK and not self.target.wait_replicas:
            # the common case, one LPUSH: the list key from a cache, no closure
            key = self._queue_keys.get(queue)
            if key is None:
                key = self._queue_key(queue)
            if bodies:
                self.rc.run("publish", self._held.execute, "LPUSH", key, *bodies)
            return len(bodies)
        if not bodies:
            return 0
        level = int(priority) if priority and self.mode != "lmove" else 0
        b = self._base(queue)
        if delay > 0:
            delay_ms = max(1, int(delay * 1000))
            for start in range(0, len(bodies), CHUNK):
                chunk = list(bodies[start:start + CHUNK])

                def build(client: object = None, c: list[bytes] = chunk) -> None:
                    self._publish_delayed(keys=[f"{b}:delayed", f"{b}:seq"],
                                          args=[b, str(level), delay_ms, *c], client=client)
                if self.target.wait_replicas:
                    self._write("publish", f"{b}:delayed", build)
                else:
                    self.rc.call("publish", build)
            return len(bodies)
        key = self._list_key(queue, level)
        if level == 0 and len(bodies) <= CHUNK and not self.target.wait_replicas:
            self.rc.run("publish", self.client.lpush, key, *bodies)
            return len(bodies)

        def send(pipe: object) -> None:
            for start in range(0, len(bodies), CHUNK):
                pipe.lpush(key, *bodies[start:start + CHUNK])  # type: ignore[attr-defined]
            if level:
                pipe.zadd(f"{b}:levels", {str(level): level})  # type: ignore[attr-defined]

        self._write("publish", key, send, transaction=True)
        return len(bodies)

    def _queue_key(self, queue: str) -> str:
        """``_list_key(queue)``, remembered for publish (a bounded cache: queue names are few)."""
        key = self._list_key(queue)
        if len(self._queue_keys) >= 1024:
            self._queue_keys.clear()
        self._queue_keys[queue] = key
        return key

    def _write(self, what: str, key: str, build: object, transaction: bool = False) -> None:
        """Run ``build(pipe)``; with ``wait=N`` also WAIT for N replicas on the same connection."""
        if self.target.wait_replicas:
            self.rc.call(what, lambda: self.target.write_and_wait(key, build))  # type: ignore[arg-type]
            return

        def run() -> None:
            pipe = self.client.pipeline(transaction=transaction)
            build(pipe)  # type: ignore[operator]
            pipe.execute()

        self.rc.call(what, run)
