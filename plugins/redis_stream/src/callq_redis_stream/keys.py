"""The stream of a queue (``<prefix>:s:<queue>``) and the batch size of one command."""

from __future__ import annotations

from collections.abc import Sequence

from callq.broker import Delivery

#: entries per pipeline / ids per script call
CHUNK = 1000


class StreamKeys:
    """A base of :class:`~callq_redis_stream.broker.RedisStreamBroker` and of its parts
    (publish.py, recovery.py)."""

    prefix: str

    def _key(self, queue: str) -> str:
        return f"{self.prefix}:s:{queue}"

    def _by_queue(self, deliveries: Sequence[Delivery]) -> dict[str, list[bytes]]:
        """The ids of ``deliveries``, per queue."""
        grouped: dict[str, list[bytes]] = {}
        for d in deliveries:
            grouped.setdefault(d.queue, []).append(d.tag)
        return grouped
