"""One typed, validated options object for every control of a task."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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
    prefetch_buffer: messages fetched beyond ``concurrency`` (default ``max(2, concurrency // 4)``;
        ``concurrency`` while calls take under 2 ms, which run in chunks).
    keepalive: seconds an idle worker thread waits before it leaves.
    stop_when_idle: stop consuming once the queue stayed empty this many seconds.
    shutdown_timeout: on stop, seconds to let running calls finish.
    timeout: seconds a call may run; then it is abandoned and counted failed (retried per
        policy). Threads cannot be killed: callq raises TimeoutError inside the call, which
        stops Python code but not a blocking C call; asyncio calls are cancelled.
    expires: seconds after publishing; a message not started by then is dropped (counted).
    expired_to_dlq: send expired messages to the dead-letter queue instead of dropping them.
    misfire_grace: a delayed call (countdown/eta) starting later than this past its time is dropped.
    dedup: skip a call whose exact arguments already succeeded (recorded in the shared store).
    dedup_ttl: seconds a success is remembered (``None``: forever).
    distributed_qps: ``qps`` is the total of every consumer of the queue, on every host.
    blackout: do-not-run windows as ("HH:MM", "HH:MM") pairs; messages wait meanwhile.
    timezone: IANA time zone of the blackout windows (default: the machine's local time).
    mode: "threads" (default), "asyncio" (default for ``async def``), "gevent" or "eventlet".
    state: broker URL whose shared store holds dedup keys, pause flags and consumer counts
        (default: the task's broker).
    rate_log_interval: seconds between the log lines with rate and time to drain the queue.
    results: where return values are kept for ``push(...).result()``: ``None`` (default) keeps
        them in the broker's shared store when it has one, else results are off; ``False``
        turns them off; ``True`` requires the broker's store; a URL picks a result store
        (``redis://...``, ``sqlite:///...``, ``postgresql://...``, ``memory://``).
    result_ttl: seconds a result is kept.
    controls: options of controls added by plugins, by control name, e.g.
        ``{"circuit_breaker": {"failures": 5}}``; unknown names or options are an error.
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
    timeout: float | None = None
    expires: float | None = None
    expired_to_dlq: bool = False
    misfire_grace: float | None = None
    dedup: bool = False
    dedup_ttl: float | None = None
    distributed_qps: bool = False
    blackout: tuple[tuple[str, str], ...] = ()
    timezone: str | None = None
    mode: Literal["threads", "asyncio", "gevent", "eventlet"] = "threads"
    state: str | None = None
    rate_log_interval: float = 60.0
    results: bool | str | None = None
    result_ttl: float = 3600.0
    controls: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

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
        for name in ("timeout", "expires", "misfire_grace", "dedup_ttl"):
            if getattr(self, name) is not None:
                _num(self, name, minimum=0.0, exclusive=True)
        _num(self, "rate_log_interval", minimum=0.0, exclusive=True)
        for name in ("expired_to_dlq", "dedup", "distributed_qps"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.dedup_ttl is not None and not self.dedup:
            raise ConfigError("dedup_ttl needs dedup=True")
        if self.distributed_qps and self.qps is None:
            raise ConfigError("distributed_qps needs qps")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.state is not None and (not isinstance(self.state, str) or "://" not in self.state):
            raise ConfigError(f"state must be a broker URL, got {self.state!r}")
        object.__setattr__(self, "blackout", parse_windows(self.blackout))
        if self.timezone is not None:
            try:
                ZoneInfo(self.timezone)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ConfigError(f"timezone {self.timezone!r} is unknown ({exc})") from None
        if self.results is not None and not isinstance(self.results, bool) and (
            not isinstance(self.results, str) or "://" not in self.results
        ):
            raise ConfigError(f"results must be True, False, None or a store URL, got {self.results!r}")
        _num(self, "result_ttl", minimum=0.0, exclusive=True)
        if not isinstance(self.controls, Mapping) or not all(
            isinstance(k, str) and isinstance(v, Mapping) for k, v in self.controls.items()
        ):
            raise ConfigError("controls must map control names to dicts of their options, "
                              f"e.g. {{'circuit_breaker': {{'failures': 5}}}}; got {self.controls!r}")
        object.__setattr__(self, "controls", {k: dict(v) for k, v in self.controls.items()})
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

    @property
    def short_call_prefetch_limit(self) -> int:
        """The same while calls take under 2 ms (run in chunks): with the default buffer, twice
        ``concurrency`` (a batch per fetch lane that pays for its round trip; held messages are
        milliseconds of work, so no other worker waits for them); an explicit buffer holds."""
        if self.prefetch_buffer is not None:
            return self.prefetch_limit
        return max(self.prefetch_limit, 2 * self.concurrency)

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


MODES = ("threads", "asyncio", "gevent", "eventlet")


def _parse_hhmm(text: object) -> dt.time:
    if not isinstance(text, str):
        raise ConfigError(f"blackout times must be 'HH:MM' strings, got {text!r}")
    try:
        return dt.time.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"blackout time {text!r} is not HH:MM") from None


def parse_windows(windows: object) -> tuple[tuple[str, str], ...]:
    """Validate blackout windows; a window may cross midnight ("22:00", "06:00")."""
    if isinstance(windows, (str, bytes)) or not isinstance(windows, (list, tuple)):
        raise ConfigError(f"blackout must be a list of ('HH:MM', 'HH:MM') pairs, got {windows!r}")
    out = []
    for window in windows:
        if not isinstance(window, (list, tuple)) or len(window) != 2:
            raise ConfigError(f"blackout window {window!r} must be a ('HH:MM', 'HH:MM') pair")
        start, end = (_parse_hhmm(t) for t in window)
        if start == end:
            raise ConfigError(f"blackout window {window!r} is empty")
        out.append((window[0], window[1]))
    return tuple(out)


def in_blackout(windows: tuple[tuple[str, str], ...], now: dt.datetime) -> dt.datetime | None:
    """If ``now`` falls in a window, when that window ends; else None."""
    t = now.time().replace(tzinfo=None)
    for start_s, end_s in windows:
        start, end = dt.time.fromisoformat(start_s), dt.time.fromisoformat(end_s)
        inside = start <= t < end if start < end else (t >= start or t < end)
        if inside:
            end_at = now.replace(hour=end.hour, minute=end.minute, second=end.second, microsecond=0)
            if end_at <= now:
                end_at += dt.timedelta(days=1)
            return end_at
    return None
