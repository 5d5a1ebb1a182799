"""Calls a consumer keeps until they are due (eta ahead, on brokers without native delay).

Bounded: beyond ``limit`` the call due last is handed back to the caller (to requeue), so
held calls never stop a consumer from fetching other messages. Not thread-safe: the
consumer guards it with its lock.
"""

from __future__ import annotations

import heapq
import itertools
import time

from .context import CallContext

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
