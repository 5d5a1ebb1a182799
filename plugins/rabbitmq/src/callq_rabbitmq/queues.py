"""What callq declares on RabbitMQ: a queue's arguments, its dead-letter queue, its delay queues.

A delayed message goes to ``<queue>.delay.<ms>``, a queue with ``x-message-ttl=<ms>`` that
dead-letters into ``<queue>`` through the default exchange and deletes itself (``x-expires``)
when unused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

QUEUE_TYPES = ("classic", "quorum")
#: a delay queue is declared again (renewing its x-expires lease) when its last declaration is older
DELAY_REDECLARE = 30.0
#: a delay queue lives this long (ms) past its TTL after its last declaration
DELAY_QUEUE_SLACK_MS = 60_000


def delay_ms(seconds: float) -> int:
    """Round a delay up to a bucket (10 ms below 10 s, 100 ms below 100 s, 1 s above) so few delay queues exist."""
    ms = max(1, math.ceil(seconds * 1000))
    step = 10 if ms < 10_000 else 100 if ms < 100_000 else 1000
    return -(-ms // step) * step


def delay_queue_name(queue: str, ms: int) -> str:
    return f"{queue}.delay.{ms}"


@dataclass(frozen=True)
class QueueArguments:
    """The ``x-`` arguments of the queues one broker URL declares (every user of a queue must agree)."""

    queue_type: str  # "classic" or "quorum"
    delivery_limit: int  # quorum only; 0: no poison guard
    max_priority: int  # 0: no x-max-priority
    expires_ms: int  # 0: no x-expires

    def arguments(self, queue: str) -> dict[str, Any]:
        args: dict[str, Any] = {}
        if self.queue_type == "quorum":
            args["x-queue-type"] = "quorum"
            if self.delivery_limit and not queue.endswith(".dlq"):
                # poison guard: returned more than delivery_limit times -> RabbitMQ moves it to <queue>.dlq
                args["x-delivery-limit"] = self.delivery_limit
                args["x-dead-letter-exchange"] = ""
                args["x-dead-letter-routing-key"] = f"{queue}.dlq"
        if self.max_priority:
            args["x-max-priority"] = self.max_priority
        if self.expires_ms:
            args["x-expires"] = self.expires_ms
        return args

    def declarations(self, queue: str) -> list[tuple[str, dict[str, Any]]]:
        """The queue, and its dead-letter queue first when RabbitMQ dead-letters into it."""
        names = [(queue, self.arguments(queue))]
        if self.delivery_limit and not queue.endswith(".dlq"):
            names.insert(0, (f"{queue}.dlq", self.arguments(f"{queue}.dlq")))
        return names

    def delay_queue(self, queue: str, delay: float) -> tuple[str, dict[str, Any]]:
        """The delay queue (name, arguments) that holds a message ``delay`` seconds, then moves it to ``queue``."""
        ms = delay_ms(delay)
        args: dict[str, Any] = {
            "x-message-ttl": ms, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": queue,
            "x-expires": ms + DELAY_QUEUE_SLACK_MS,
        }
        if self.queue_type == "quorum":  # replicated like the queue it feeds
            args["x-queue-type"] = "quorum"
        return delay_queue_name(queue, ms), args
