"""Deliveries waiting for ``fetch``, and the prefetch each queue's consumer should have."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence

from callq.broker import Delivery


class Inbox:
    """Per queue: deliveries received and not yet fetched, deliveries fetched and not yet settled,
    and the prefetch its consumer should have (thread-safe: the I/O thread fills it, callers take).

    The prefetch is ``min(limit, max_n + fetched-but-unsettled)``, raised only when a fetch asks
    for more, so a worker never holds more unacked messages than its concurrency plus its buffer.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._buffers: dict[str, deque[Delivery]] = {}
        self._outstanding: dict[str, int] = {}
        self._subs: dict[str, int] = {}  # queue -> wanted prefetch (consumers to keep)
        self._closed = False

    # --- fetching threads -------------------------------------------------------------------------

    def raise_prefetch(self, queue: str, max_n: int, limit: int) -> tuple[int, int]:
        """(wanted, before): the prefetch a fetch of ``max_n`` needs, and the one it had. Recorded
        when higher: the consumer must then be (re)subscribed with it, or ``undo_raise`` called."""
        with self._cond:
            want = min(limit, max(1, max_n) + self._outstanding.get(queue, 0))
            before = self._subs.get(queue, 0)
            if want > before:
                self._subs[queue] = want
        return want, before

    def undo_raise(self, queue: str, want: int, before: int) -> None:
        """Back to ``before`` (0: no consumer) unless another fetch changed it since."""
        with self._cond:
            if self._subs.get(queue) == want:
                if before:
                    self._subs[queue] = before
                else:
                    del self._subs[queue]

    def take(self, queue: str, max_n: int, deadline: float) -> list[Delivery]:
        """Up to ``max_n`` deliveries of ``queue``, waiting until the ``deadline`` (monotonic) for one."""
        with self._cond:
            while True:
                buf = self._buffers.get(queue)
                if buf:
                    n = min(max_n, len(buf))
                    out = [buf.popleft() for _ in range(n)]
                    self._outstanding[queue] = self._outstanding.get(queue, 0) + n
                    return out
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    return []
                self._cond.wait(remaining)

    def settled(self, deliveries: Sequence[Delivery]) -> None:
        """Fetched deliveries acked or requeued: no longer count against the prefetch."""
        with self._cond:
            for d in deliveries:
                left = self._outstanding.get(d.queue, 0) - 1
                self._outstanding[d.queue] = max(0, left)

    def close(self) -> None:
        """Fetches waiting, and later ones, return at once with what is here."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # --- the I/O thread ---------------------------------------------------------------------------

    def put(self, delivery: Delivery) -> None:
        with self._cond:
            buf = self._buffers.get(delivery.queue)
            if buf is None:
                buf = self._buffers[delivery.queue] = deque()
            buf.append(delivery)
            self._cond.notify_all()

    def drop(self) -> None:
        """Forget every delivery (their channel is gone: RabbitMQ redelivers them)."""
        with self._cond:
            self._buffers.clear()
            self._outstanding.clear()

    def subscriptions(self) -> dict[str, int]:
        """queue -> prefetch, for every consumer to keep."""
        with self._cond:
            return dict(self._subs)

    def unsubscribe(self, queue: str) -> None:
        with self._cond:
            self._subs.pop(queue, None)
