"""stop_when_idle: stop consuming once the queue stayed empty (and nothing ran) that long."""

from __future__ import annotations

import logging
import time
from typing import Any

from ..options import TaskOptions
from . import Control

log = logging.getLogger("callq.worker")


class StopWhenIdle(Control):
    name = "stop_when_idle"
    order = 950
    tick_every = 0.1

    @classmethod
    def applies(cls, task_options: TaskOptions, options: Any) -> bool:
        return task_options.stop_when_idle is not None

    def start(self) -> None:
        self.limit_s: float = self.consumer.options.stop_when_idle  # type: ignore[assignment]
        self._busy_at = time.monotonic()
        # fetch in short waits so the consumer notices the stop soon
        self.consumer.fetch_timeout = min(self.consumer.fetch_timeout, max(0.05, self.limit_s / 2))

    def tick(self, now: float) -> None:
        consumer = self.consumer
        if consumer.in_flight:
            self._busy_at = now
            return
        if now - max(self._busy_at, consumer.last_delivery) < self.limit_s:
            return
        try:
            empty = consumer.conn.size(consumer.queue) == 0
        except Exception:  # noqa: BLE001
            empty = False
        if empty:
            log.info("queue %s stayed empty for %.1fs; stopping", consumer.queue, self.limit_s)
            consumer.stop()
        else:
            self._busy_at = now
