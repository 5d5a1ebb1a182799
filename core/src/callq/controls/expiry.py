"""Expiry and misfire grace: a call not started in time is dropped (or dead-lettered)."""

from __future__ import annotations

import time
from typing import Any

from ..context import CallContext
from ..options import TaskOptions
from . import Control, Drop, Verdict


class Expiry(Control):
    name = "expiry"
    order = 100

    @classmethod
    def applies(cls, task_options: TaskOptions, options: Any) -> bool:
        # a message may carry its own expires_at / eta whatever the task's options
        return True

    def start(self) -> None:
        opts = self.consumer.options
        self.expires, self.grace, self.to_dlq = opts.expires, opts.misfire_grace, opts.expired_to_dlq
        if self.expires is None:  # only a message's own expires_at (or eta, for misfires) matters
            self.admit_keys = frozenset({"expires_at", "eta"} if self.grace is not None else {"expires_at"})

    def admit(self, call: CallContext) -> Verdict | None:
        get = call.meta.get
        expires_at = get("expires_at")
        if expires_at is None and self.expires is not None:
            published = get("published_at")
            if published is not None:
                expires_at = published + self.expires
        eta = get("eta") if self.grace is not None else None
        if expires_at is None and eta is None:
            return None
        now = time.time()
        if expires_at is not None and now > expires_at:
            return Drop(f"expired {now - expires_at:.1f}s ago", to_dlq=self.to_dlq)
        if eta is not None and now - eta > self.grace:  # type: ignore[operator]
            return Drop(f"misfired: due {now - eta:.1f}s ago, grace {self.grace}s", to_dlq=self.to_dlq)
        return None
