"""Delays (countdown / eta): a call due later is held by the consumer until its time.

Brokers with native delays deliver on time already; this holds the rest (and calls that a
broker delivered a little early).
"""

from __future__ import annotations

import time

from ..context import CallContext
from . import Control, Hold, Verdict

EARLY = 0.002  # seconds early that still count as on time


class Delay(Control):
    name = "delay"
    order = 400
    admit_keys = frozenset({"eta"})

    def admit(self, call: CallContext) -> Verdict | None:
        eta = call.meta.get("eta")
        if eta is not None and eta - time.time() > EARLY:
            return Hold("due later", until=eta)
        return None
