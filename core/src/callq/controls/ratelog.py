"""The periodic log line: calls per minute, messages waiting and the time to drain them."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from ..options import TaskOptions
from . import Control

log = logging.getLogger("callq.worker")


class RateLog(Control):
    name = "rate_log"
    order = 990

    @classmethod
    def applies(cls, task_options: TaskOptions, options: Any) -> bool:
        return True

    def start(self) -> None:
        self.tick_every = self.consumer.options.rate_log_interval  # type: ignore[misc]
        self._last_done = 0
        self._first = True

    def tick(self, now: float) -> None:
        if self._first:  # the first tick comes at once; count from there
            self._first = False
            return
        consumer = self.consumer
        done = consumer.stats().done
        per_minute = (done - self._last_done) * 60.0 / self.tick_every
        try:
            waiting = consumer.conn.size(consumer.queue)
        except Exception:  # noqa: BLE001
            waiting = -1
        if per_minute > 0 and waiting >= 0:
            eta = dt.timedelta(seconds=round(waiting / per_minute * 60))
            log.info("%s: %.0f calls/min, %d waiting, about %s to drain", consumer.queue, per_minute, waiting, eta)
        elif done != self._last_done or waiting > 0:
            log.info("%s: %.0f calls/min, %d waiting", consumer.queue, per_minute, waiting)
        self._last_done = done
