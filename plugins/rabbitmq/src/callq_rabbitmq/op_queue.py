"""Operations other threads hand to the I/O thread, each with the future it completes."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from callq.errors import BrokerError
from callq.url import BrokerURL

#: an operation run on the I/O thread; it completes (or fails) the future it is given
Op = Callable[[Future[Any]], None]


class OpQueue:
    """A FIFO of operations (thread-safe); only the I/O thread runs them."""

    def __init__(self, url: BrokerURL) -> None:
        self.url = url
        self._lock = threading.Lock()
        self._ops: deque[tuple[Future[Any], Op]] = deque()
        self._closed = False

    def put(self, op: Op) -> Future[Any]:
        """Queue ``op``; BrokerError once closed."""
        fut: Future[Any] = Future()
        with self._lock:
            if self._closed:
                raise BrokerError(f"RabbitMQ connection {self.url} is closed")
            self._ops.append((fut, op))
        return fut

    def result(self, fut: Future[Any], timeout: float, what: str) -> Any:
        """``fut``'s result; BrokerError when not started (then cancelled) or not done in time."""
        try:
            return fut.result(timeout)
        except FutureTimeout:
            if fut.cancel():
                raise BrokerError(f"{what} on {self.url}: not connected to RabbitMQ within {timeout:.0f}s") from None
            try:  # running: its outcome comes soon (confirms or connection loss)
                return fut.result(timeout)
            except FutureTimeout:
                raise BrokerError(f"{what} on {self.url}: no answer from RabbitMQ within {2 * timeout:.0f}s") from None
        except CancelledError:  # pragma: no cover - only we cancel
            raise BrokerError(f"{what} on {self.url} cancelled") from None

    def close(self) -> None:
        """Refuse new operations; those queued still run."""
        with self._lock:
            self._closed = True

    # --- the I/O thread ---------------------------------------------------------------------------

    def run(self) -> None:
        """Run every queued operation not cancelled; an exception fails its future."""
        while True:
            with self._lock:
                if not self._ops:
                    return
                fut, op = self._ops.popleft()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                op(fut)
            except Exception as exc:  # noqa: BLE001 - reported to the caller
                if not fut.done():
                    fut.set_exception(exc)

    def fail_all(self) -> None:
        """Fail what is still queued (the connection is closed for good)."""
        with self._lock:
            ops = list(self._ops)
            self._ops.clear()
        for fut, _ in ops:
            if not fut.done():
                fut.set_exception(BrokerError(f"RabbitMQ connection {self.url} is closed"))
