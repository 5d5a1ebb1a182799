"""The Redis keys of a queue (their layout is described in _lua.py) and the batch size of one command."""

from __future__ import annotations

from collections.abc import Sequence

from callq.broker import Delivery

#: values per LPUSH / ids per script call
CHUNK = 1000


class QueueKeys:
    """Key names of a queue and of this consumer's own structures: a base of
    :class:`~callq_redis.broker.RedisBroker` and of its parts (publish.py, recovery.py)."""

    prefix: str
    consumer_id: str

    def _base(self, queue: str) -> str:
        return f"{self.prefix}:{{{queue}}}"

    def _list_key(self, queue: str, level: int = 0) -> str:
        b = self._base(queue)
        return f"{b}:q" if level == 0 else f"{b}:qp{level}"

    def _own(self, queue: str, what: str) -> str:
        """This consumer's ``inflight`` hash or ``proc`` list of ``queue``."""
        return f"{self._base(queue)}:{what}:{self.consumer_id}"

    def _by_queue(self, deliveries: Sequence[Delivery], tags: bool) -> dict[str, list[bytes]]:
        """The tags (or bodies) of ``deliveries``, per queue."""
        grouped: dict[str, list[bytes]] = {}
        for d in deliveries:
            grouped.setdefault(d.queue, []).append(d.tag if tags else d.body)
        return grouped
