"""Calls a consumer keeps until they are due (eta ahead, on brokers without native delay).

Bounded: beyond ``limit`` the call due last is handed back to the caller (to requeue), so
held calls never stop a consumer from fetching other messages. Not thread-safe: the
consumer guards it with its lock.
"""

from __future__ import annotations

import heapq
import itertools
import time
from typing import TYPE_CHECKING

from .context import CallContext

if TYPE_CHECKING:
    from .consumer import Consumer

MAX_HELD = 1000


class HeldCalls:
    def __init__(self, limit: int = MAX_HELD) -> None:
        self.limit = limit
        self._heap: list[tuple[float, int, CallContext]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def hold(self, call: CallContext, until: float) -> CallContext | None:
        """Keep ``call`` until ``until`` (UNIX time); returns a call to give back if over the limit."""
        due = time.monotonic() + max(0.0, until - time.time())
        heapq.heappush(self._heap, (due, next(self._seq), call))
        if len(self._heap) <= self.limit:
            return None
        latest = max(range(len(self._heap)), key=lambda i: self._heap[i][0])
        spilled = self._heap.pop(latest)[2]
        heapq.heapify(self._heap)
        return spilled

    def next_in(self) -> float | None:
        """Seconds until the first held call is due, or None if none is held."""
        return self._heap[0][0] - time.monotonic() if self._heap else None

    def pop_due(self) -> list[CallContext]:
        now = time.monotonic()
        heap = self._heap
        due = []
        while heap and heap[0][0] <= now:
            due.append(heapq.heappop(heap)[2])
        return due

    def clear(self) -> list[CallContext]:
        calls = [call for _, _, call in self._heap]
        self._heap.clear()
        return calls


class Holding:
    """A mixin of :class:`callq.consumer.Consumer`: holding calls that are due later, and
    running them once due."""

    def _hold(self: Consumer, call: CallContext, until: float) -> None:  # type: ignore[misc]
        with self._lock:
            spilled = self._held.hold(call, until)
            self._lock.notify_all()
        if spilled is not None:
            self.settler.requeue([spilled.delivery], max(0.0, spilled.meta.get("eta", 0) - time.time()))

    def _release_due(self: Consumer) -> None:  # type: ignore[misc]
        if not self._held:
            return
        with self._lock:
            due = self._held.pop_due()
        ready = [call for call in due if self.admit(call)]
        if self.controls.pace:  # type: ignore[attr-defined]
            self._submit_paced(ready)
        else:
            self.submit_many(ready)
