"""The call being run: :class:`CallContext` and :func:`current`."""

from __future__ import annotations

import contextvars
import threading
import traceback as _tb
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .broker import Delivery
    from .consumer import Consumer
    from .task import Task

OUTCOMES = ("done", "retry", "requeue", "dead", "expired", "skipped", "malformed")


class CallContext:
    """One message on its way through a consumer; inside the function: :func:`callq.current`.

    ``outcome`` is None until the call reached one of :data:`OUTCOMES`. ``stash`` is a dict
    where plugins and controls keep their own data for this call (key by your plugin's name).
    """

    __slots__ = ("task", "queue", "kwargs", "meta", "delivery", "outcome", "error", "result",
                 "started_at", "finished_at", "consumer", "_stash", "reason", "retry_delay",
                 "_settled", "__weakref__")

    def __init__(self, consumer: Consumer, delivery: Delivery, kwargs: dict[str, Any],
                 meta: dict[str, Any]) -> None:
        self.consumer = consumer
        self.task: Task[Any, Any] = consumer.task
        self.queue = delivery.queue
        self.delivery = delivery
        self.kwargs = kwargs
        self.meta = meta
        self.outcome: str | None = None
        self.error: BaseException | None = None
        self.result: Any = None
        self.started_at = 0.0
        self.finished_at = 0.0
        self._stash: dict[str, Any] | None = None
        self.reason: str | None = None  # why: dead-letter reason, expiry, skip
        self.retry_delay = 0.0
        self._settled = False

    @property
    def stash(self) -> dict[str, Any]:
        """Plugins' and controls' own data for this call (key by your plugin's name)."""
        stash = self._stash
        if stash is None:
            stash = self._stash = {}
        return stash

    @property
    def id(self) -> str | None:
        value = self.meta.get("id")
        return value if isinstance(value, str) else None

    @property
    def attempt(self) -> int:
        """0 for the first run, 1 for the first retry, ..."""
        value = self.meta.get("attempt", 0)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    @property
    def traceback(self) -> str | None:
        exc = self.error
        if exc is None:
            return None
        return "".join(_tb.format_exception(type(exc), exc, exc.__traceback__))

    def claim(self) -> bool:
        """The first to claim a call settles it (its thread, or a control that gave up on it)."""
        with _claim_lock:
            if self._settled:
                return False
            self._settled = True
            return True

    @property
    def settled(self) -> bool:
        return self._settled

    def __repr__(self) -> str:
        return f"<call {self.task.name} id={self.id} attempt={self.attempt} outcome={self.outcome}>"


_claim_lock = threading.Lock()
_current: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar("callq_current", default=None)
_local = threading.local()


def current() -> CallContext | None:
    """The call running in this thread or asyncio task, or None outside a task."""
    call = getattr(_local, "call", None)
    return call if call is not None else _current.get()


def set_current(call: CallContext | None) -> None:
    """Thread-bound (cheap); asyncio tasks use :func:`set_current_async`."""
    _local.call = call


def set_current_async(call: CallContext | None) -> None:
    _current.set(call)
