"""An elastic thread pool: threads start only when work waits, and leave when not needed.

A thread leaves after ``keepalive`` seconds without work, and also right after a task when
more threads are alive than the busiest moment of the last two keep-alive windows needed:
work that keeps trickling in therefore cannot keep a large pool alive.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable

log = logging.getLogger("callq.pool")

_STOP = object()


class ElasticPool:
    def __init__(self, max_threads: int, keepalive: float = 10.0, name: str = "callq") -> None:
        self.max_threads = max_threads
        self.keepalive = keepalive
        self.name = name
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._pending = 0
        self._busy = 0
        self._peak_now = 0
        self._peak_before = 0
        self._window_ends = time.monotonic() + keepalive
        self._seq = 0
        self._all_done = threading.Condition(self._lock)
        self.threads_started = 0

    @property
    def threads(self) -> int:
        return self._threads

    @property
    def busy(self) -> int:
        return self._busy

    def submit(self, fn: Callable[[Any], None], arg: Any) -> None:
        with self._lock:
            self._pending += 1
            spawn = self._pending > self._idle and self._threads < self.max_threads
            if spawn:
                self._threads += 1
                self._seq += 1
                seq = self._seq
        self._q.put((fn, arg))
        if spawn:
            self.threads_started += 1
            threading.Thread(target=self._work, name=f"{self.name}-{seq}", daemon=True).start()

    def _needed(self, now: float) -> int:
        if now >= self._window_ends:
            self._peak_before = self._peak_now
            self._peak_now = self._busy
            self._window_ends = now + self.keepalive
        return max(self._peak_now, self._peak_before)

    def _work(self) -> None:
        get = self._q.get
        lock = self._lock
        keepalive = self.keepalive
        while True:
            with lock:
                self._idle += 1
            try:
                item = get(timeout=keepalive)
            except queue.Empty:
                with lock:
                    self._idle -= 1
                    if self._pending == 0 or self._threads > self._pending:
                        self._exit_locked()
                        return
                continue
            with lock:
                self._idle -= 1
                self._pending -= 1
                if item is _STOP:
                    self._exit_locked()
                    return
                self._busy += 1
                if self._busy > self._peak_now:
                    self._peak_now = self._busy
            fn, arg = item
            try:
                fn(arg)
            except BaseException:  # noqa: BLE001 - a task must never kill its thread silently
                log.exception("unexpected error in pool task")
            with lock:
                self._busy -= 1
                if self._busy == 0 and self._pending == 0:
                    self._all_done.notify_all()
                if self._threads > self._needed(time.monotonic()) + 1 and self._pending < self._idle + 1:
                    self._exit_locked()
                    return

    def _exit_locked(self) -> None:
        self._threads -= 1
        self._all_done.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no task runs or waits; True if that happened within ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._busy or self._pending:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._all_done.wait(remaining)
            return True

    def shutdown(self) -> None:
        """Ask every idle thread to leave (running tasks finish first)."""
        with self._lock:
            n = self._threads
            self._pending += n
        for _ in range(n):
            self._q.put(_STOP)
