"""Publishing onto a queue's stream: XADD (field ``b`` = body), pipelined for a batch, with
approximate trimming (``maxlen``) and ``wait=N``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from callq_redis.client import RetryingClient
from callq_redis.topology import RedisTarget

from .keys import CHUNK, StreamKeys


class StreamPublishing(StreamKeys):
    """Mixin of :class:`~callq_redis_stream.broker.RedisStreamBroker`: ``callq_publish``."""

    target: RedisTarget
    client: Any
    rc: RetryingClient
    maxlen: int | None

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


def _queue_xadd(pipe: Any, key: str, bodies: Sequence[bytes], trim: dict[str, Any]) -> None:
    for body in bodies:
        pipe.xadd(key, {"b": body}, **trim)


def _pipeline_xadd(client: redis.Redis, key: str, bodies: Sequence[bytes], trim: dict[str, Any]) -> None:
    pipe = client.pipeline(transaction=False)
    _queue_xadd(pipe, key, bodies, trim)
    pipe.execute()
