"""``memory://name``: results in this process only (tests, one-process apps). Expired records
are dropped as new ones arrive, oldest first, and at most ``max`` (URL parameter, default
100000) are kept; a record past its TTL is never returned."""

from __future__ import annotations

import threading
import time
from collections import deque
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
        self._order: deque[tuple[float, str]] = deque()  # (expires, id) in the order written
        self._cond = threading.Condition()

    def put_many(self, items: Sequence[tuple[str, Record, float]]) -> None:
        now = time.monotonic()
        with self._cond:
            data, order = self._data, self._order
            for call_id, record, ttl in items:
                until = now + ttl
                data[call_id] = (record, until)
                order.append((until, call_id))
            self._sweep(now)
            self._cond.notify_all()

    def _sweep(self, now: float) -> None:
        # oldest first: a task's records share a TTL, so this is expiry order (a longer TTL
        # ahead only delays dropping shorter ones, which ``get`` hides; ``max`` bounds them)
        data, order = self._data, self._order
        while order and (order[0][0] <= now or len(data) > self.max):
            until, call_id = order.popleft()
            item = data.get(call_id)
            if item is not None and item[1] <= until:
                del data[call_id]
        if len(order) > 2 * len(data) + 1000:  # stale entries of overwritten records
            self._order = deque(sorted((u, i) for i, (_, u) in data.items()))

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
