"""One typed, validated options object for every control of a task."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from .errors import ConfigError


@dataclass(frozen=True)
class TaskOptions:
    """Everything that controls how a task is published and consumed.

    queue: queue name.
    broker: broker URL; ``None`` uses ``CALLQ_BROKER_URL`` or the embedded sqlite default.
    concurrency: ceiling of calls running at once (threads start only as work demands).
    qps: calls started per second (evenly paced), ``None`` for unlimited.
    max_retries: retries after the first failed attempt, then dead-letter.
    retry_backoff: seconds before the first retry; doubles each time (with jitter).
    retry_backoff_max: ceiling of the retry delay.
    dead_letter_queue: where failed and malformed messages go; default ``<queue>.dlq``.
    prefetch_buffer: messages fetched beyond ``concurrency`` (default ``max(2, concurrency // 4)``).
    keepalive: seconds an idle worker thread waits before it leaves.
    stop_when_idle: stop consuming once the queue stayed empty this many seconds.
    shutdown_timeout: on stop, seconds to let running calls finish.
    """

    queue: str
    broker: str | None = None
    concurrency: int = 32
    qps: float | None = None
    max_retries: int = 3
    retry_backoff: float = 1.0
    retry_backoff_max: float = 300.0
    dead_letter_queue: str | None = None
    prefetch_buffer: int | None = None
    keepalive: float = 10.0
    stop_when_idle: float | None = None
    shutdown_timeout: float = 30.0

    def __post_init__(self) -> None:
        if not isinstance(self.queue, str) or not self.queue.strip():
            raise ConfigError(f"queue must be a non-empty string, got {self.queue!r}")
        if self.broker is not None and (not isinstance(self.broker, str) or "://" not in self.broker):
            raise ConfigError(f"broker must be a URL such as 'redis://localhost:6379/0', got {self.broker!r}")
        _int(self, "concurrency", minimum=1)
        _int(self, "max_retries", minimum=0)
        if self.prefetch_buffer is not None:
            _int(self, "prefetch_buffer", minimum=0)
        if self.qps is not None:
            _num(self, "qps", minimum=0.0, exclusive=True)
        _num(self, "retry_backoff", minimum=0.0)
        _num(self, "retry_backoff_max", minimum=0.0)
        _num(self, "keepalive", minimum=0.0, exclusive=True)
        _num(self, "shutdown_timeout", minimum=0.0)
        if self.stop_when_idle is not None:
            _num(self, "stop_when_idle", minimum=0.0)
        if self.dead_letter_queue is not None and (
            not isinstance(self.dead_letter_queue, str) or not self.dead_letter_queue.strip()
        ):
            raise ConfigError(f"dead_letter_queue must be a non-empty string, got {self.dead_letter_queue!r}")
        if self.dead_letter_queue == self.queue:
            raise ConfigError("dead_letter_queue must differ from queue")

    @property
    def dlq(self) -> str:
        return self.dead_letter_queue or f"{self.queue}.dlq"

    @property
    def prefetch_limit(self) -> int:
        """Most unacked messages a worker holds: concurrency plus a small buffer."""
        buffer = self.prefetch_buffer if self.prefetch_buffer is not None else max(2, self.concurrency // 4)
        return self.concurrency + buffer

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def _int(opts: TaskOptions, name: str, *, minimum: int) -> None:
    value = getattr(opts, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")


def _num(opts: TaskOptions, name: str, *, minimum: float, exclusive: bool = False) -> None:
    value = getattr(opts, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if value < minimum or (exclusive and value == minimum):
        op = ">" if exclusive else ">="
        raise ConfigError(f"{name} must be {op} {minimum}, got {value}")
