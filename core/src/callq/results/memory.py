"""``memory://name``: results in this process only (tests, one-process apps). Expired records
are dropped as new ones arrive, and at most ``max`` (URL parameter, default 100000) are kept."""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Sequence

from ..url import BrokerURL
from .store import FINAL, Record


class MemoryResultStore:
    def __init__(self, url: str) -> None:
        parsed = BrokerURL.parse(url)
        self.url = url
        parsed.check_params(("max",))
        self.max = parsed.int_param("max", 100_000, minimum=1)
        self._data: dict[str, tuple[Record, float]] = {}
        self._expiry: list[tuple[float, str]] = []
        self._cond = threading.Condition()

    def put_many(self, items: Sequence[tuple[str, Record, float]]) -> None:
        now = time.monotonic()
        with self._cond:
            for call_id, record, ttl in items:
                until = now + ttl
                self._data[call_id] = (record, until)
                heapq.heappush(self._expiry, (until, call_id))
            self._sweep(now)
            self._cond.notify_all()

    def _sweep(self, now: float) -> None:
        heap = self._expiry
        while heap and (heap[0][0] <= now or len(self._data) > self.max):
            until, call_id = heapq.heappop(heap)
            item = self._data.get(call_id)
            if item is not None and item[1] <= until:
                del self._data[call_id]
        if len(heap) > 2 * len(self._data) + 1000:  # stale entries of overwritten records
            self._expiry = [(u, i) for i, (_, u) in self._data.items()]
            heapq.heapify(self._expiry)

    def get(self, call_id: str) -> Record | None:
        with self._cond:
            item = self._data.get(call_id)
            if item is None or item[1] <= time.monotonic():
                return None
            return item[0]

    def wait(self, call_id: str, timeout: float | None) -> Record | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                item = self._data.get(call_id)
                if item is not None and item[0].get("status") in FINAL:
                    return item[0]
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)

    def __len__(self) -> int:
        return len(self._data)

    def close(self) -> None:
        pass
