"""Retry policy: which failures run again, after how long, and which go to the dead-letter queue.

``Requeue`` puts the message back unchanged (not an attempt); ``Reject`` dead-letters at once;
``Retry(delay=...)`` sets its own delay; any other exception retries with exponential backoff
(with jitter) until ``max_retries``, then dead-letters.
"""

from __future__ import annotations

import random

from ..context import CallContext
from ..errors import Reject, Requeue, Retry
from . import Control


def backoff(attempt: int, base: float, ceiling: float) -> float:
    delay = min(base * (2**attempt), ceiling)
    return delay * random.uniform(0.8, 1.2) if delay else 0.0


class RetryPolicy(Control):
    name = "retry"
    order = 100

    def classify(self, call: CallContext) -> None:
        exc = call.error
        opts = self.consumer.options
        if isinstance(exc, Requeue):
            call.outcome = "requeue"
            call.retry_delay = exc.delay
        elif isinstance(exc, Reject):
            call.outcome = "dead"
            call.reason = "rejected"
        elif call.attempt < opts.max_retries:
            call.outcome = "retry"
            if isinstance(exc, Retry) and exc.delay is not None:
                call.retry_delay = exc.delay
            else:
                call.retry_delay = backoff(call.attempt, opts.retry_backoff, opts.retry_backoff_max)
        else:
            call.outcome = "dead"
            call.reason = "retries exhausted"
