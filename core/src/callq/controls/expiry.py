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

    def admit(self, call: CallContext) -> Verdict | None:
        meta = call.meta
        if not meta:
            return None
        opts = self.consumer.options
        now = time.time()
        expires_at = meta.get("expires_at")
        if expires_at is None and opts.expires is not None:
            published = meta.get("published_at")
            if published is not None:
                expires_at = published + opts.expires
        if expires_at is not None and now > expires_at:
            return Drop(f"expired {now - expires_at:.1f}s ago", to_dlq=opts.expired_to_dlq)
        eta = meta.get("eta")
        grace = opts.misfire_grace
        if eta is not None and grace is not None and now - eta > grace:
            return Drop(f"misfired: due {now - eta:.1f}s ago, grace {grace}s", to_dlq=opts.expired_to_dlq)
        return None
