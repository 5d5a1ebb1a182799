"""Do-not-run windows: inside one, the consumer fetches nothing and messages wait."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

from ..options import TaskOptions, in_blackout
from . import Control


class Blackout(Control):
    name = "blackout"
    order = 300

    @classmethod
    def applies(cls, task_options: TaskOptions, options: Any) -> bool:
        return bool(task_options.blackout)

    def start(self) -> None:
        tz = self.consumer.options.timezone
        self._tz = ZoneInfo(tz) if tz else None

    def gate(self) -> str | None:
        now = dt.datetime.now(self._tz) if self._tz else dt.datetime.now()
        until = in_blackout(self.consumer.options.blackout, now)
        return f"in a blackout window until {until:%H:%M}" if until is not None else None
