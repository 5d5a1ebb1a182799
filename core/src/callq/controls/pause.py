"""Pause / resume a queue from anywhere: a flag in the shared store, read every second."""

from __future__ import annotations

import logging
import time
from typing import Any

from ..options import TaskOptions
from . import Control

log = logging.getLogger("callq.worker")


def pause_key(queue: str) -> str:
    return f"callq:pause:{queue}"


class Pause(Control):
    name = "pause"
    order = 310
    tick_every = 1.0

    @classmethod
    def applies(cls, task_options: TaskOptions, options: Any) -> bool:
        return True

    def start(self) -> None:
        self._paused = False
        self._store = None
        consumer = self.consumer
        if consumer.options.state or consumer.conn.capabilities.shared_state:
            self._store = consumer.state
        self.tick(time.monotonic())  # a paused queue must not deliver even one message

    def gate(self) -> str | None:
        return "paused" if self._paused else None

    def tick(self, now: float) -> None:
        if self._store is None:
            return
        try:
            self._paused = self._store.get(pause_key(self.consumer.queue)) is not None
        except Exception as exc:  # noqa: BLE001
            log.warning("shared store of %s unreachable: %s: %s", self.consumer.queue, type(exc).__name__, exc)
