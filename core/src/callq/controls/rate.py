"""qps: calls started per second, paced by time whatever the calls' latency.

Local: one consumer starts at most ``qps`` calls a second, evenly spaced. Distributed:
each consumer registers in the shared store with a short TTL and paces at
``qps / live consumers``, so the total holds as consumers come and go.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..options import TaskOptions
from . import Control

log = logging.getLogger("callq.worker")

CATCH_UP = 0.05  # a gate running late by less than this catches up (no lost starts)
REGISTRATION_TTL = 5.0


class Rate(Control):
    name = "rate"
    order = 600
    tick_every = 1.0

    @classmethod
    def applies(cls, task_options: TaskOptions, options: Any) -> bool:
        return task_options.qps is not None

    def start(self) -> None:
        opts = self.consumer.options
        assert opts.qps is not None
        self.interval = 1.0 / opts.qps
        self._next = 0.0
        self._key = f"callq:consumers:{self.consumer.queue}:"
        if opts.distributed_qps:
            self.tick(time.monotonic())

    def limit(self, n: int) -> int:
        return min(n, max(1, int(1.0 / self.interval) + 1))

    def pace(self) -> float:
        now = time.monotonic()
        slot = self._next
        interval = self.interval
        if slot < now - (interval if interval > CATCH_UP else CATCH_UP):
            slot = now  # idle or far behind: start afresh rather than burst
        self._next = slot + interval
        return slot - now

    def tick(self, now: float) -> None:
        opts = self.consumer.options
        if not opts.distributed_qps or opts.qps is None:
            return
        store = self.consumer.state
        try:
            store.put(self._key + self.consumer.consumer_id, str(time.time()), ttl=REGISTRATION_TTL)
            live = max(1, len(store.scan(self._key)))
            self.interval = live / opts.qps
        except Exception as exc:  # noqa: BLE001
            log.warning("shared store of %s unreachable: %s: %s", self.consumer.queue, type(exc).__name__, exc)

    def stop(self) -> None:
        if self.consumer.options.distributed_qps:
            try:
                self.consumer.state.delete(self._key + self.consumer.consumer_id)
            except Exception:  # noqa: BLE001
                pass
