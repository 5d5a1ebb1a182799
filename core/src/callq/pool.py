"""An elastic thread pool: threads start only when work waits, and leave when not needed.

Growth: a new thread starts when a submitted task finds no idle thread, or when a worker
takes a task that waited longer than ``grow_after``. Slow calls get as many threads as
their latency needs, up to ``max_threads``; very fast calls arrive in chunks (see the
runner) and so run on few threads.

Shrink: a thread leaves after ``keepalive`` seconds without work, and also right after a
task (once it has lived ``keepalive`` seconds) when more threads are alive than the busiest
moment of the last two keep-alive windows needed: work that keeps trickling in cannot keep a
large pool alive.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("callq.pool")

_STOP = object()


class _Counted:
    """What both pools share: counters of waiting and running tasks, and waiting for none."""

    _lock: threading.Lock
    _all_done: threading.Condition
    _busy: int
    _pending: int

    @property
    def busy(self) -> int:
        return self._busy

    @property
    def pending(self) -> int:
        return self._pending

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


class ElasticPool(_Counted):
    def __init__(self, max_threads: int, keepalive: float = 10.0, name: str = "callq",
                 grow_after: float = 0.02) -> None:
        self.max_threads = max_threads
        self.keepalive = keepalive
        self.grow_after = grow_after
        self.name = name
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._all_done = threading.Condition(self._lock)
        self._threads = 0
        self._idle = 0
        self._pending = 0
        self._busy = 0
        self._peak_now = 0
        self._peak_before = 0
        self._window_ends = time.monotonic() + keepalive
        self._last_take = time.monotonic()
        self._seq = 0
        self.threads_started = 0

    @property
    def threads(self) -> int:
        return self._threads


    @property
    def idle(self) -> int:
        return self._idle

    def submit(self, fn: Callable[[Any], None], arg: Any) -> None:
        now = time.monotonic()
        self._q.put((fn, arg, now))
        with self._lock:
            self._pending += 1
            if self._pending > self._idle:  # work waits and no thread is free
                self._spawn_locked(1)

    def grow_if_starved(self) -> None:
        """Start threads if tasks wait and none was taken recently (call it now and then)."""
        with self._lock:
            if self._pending > self._idle and time.monotonic() - self._last_take > self.grow_after:
                self._spawn_locked(self._pending - self._idle)

    def _spawn_locked(self, n: int) -> None:
        n = min(n, self.max_threads - self._threads)
        for _ in range(n):
            self._threads += 1
            self._idle += 1  # counts as idle until it takes its first task
            self._seq += 1
            self.threads_started += 1
            threading.Thread(target=self._work, name=f"{self.name}-{self._seq}", daemon=True).start()

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
        monotonic = time.monotonic
        born = monotonic()
        first = True
        while True:
            if not first:
                with lock:
                    self._idle += 1
            first = False
            try:
                item = get(timeout=keepalive)
            except queue.Empty:
                with lock:
                    self._idle -= 1
                    if self._pending <= self._idle:
                        self._exit_locked()
                        return
                continue
            if item is _STOP:
                with lock:
                    self._idle -= 1
                    self._pending -= 1
                    self._exit_locked()
                return
            fn, arg, enqueued = item
            now = monotonic()
            with lock:
                self._idle -= 1
                self._pending -= 1
                self._busy += 1
                self._last_take = now
                if self._busy > self._peak_now:
                    self._peak_now = self._busy
                if now - enqueued > self.grow_after and self._pending > self._idle:
                    self._spawn_locked(self._pending - self._idle)
            try:
                fn(arg)
            except BaseException:  # noqa: BLE001 - a task must never kill its thread silently
                log.exception("unexpected error in pool task")
            with lock:
                self._busy -= 1
                if self._busy == 0 and self._pending == 0:
                    self._all_done.notify_all()
                now = monotonic()
                if (now - born > keepalive and self._threads > self._needed(now) + 1
                        and self._pending <= self._idle):
                    self._exit_locked()
                    return

    def _exit_locked(self) -> None:
        self._threads -= 1
        self._all_done.notify_all()


    def shutdown(self) -> None:
        """Ask every thread to leave once its current task is done."""
        with self._lock:
            n = self._threads
            self._pending += n
        for _ in range(n):
            self._q.put(_STOP)


class AsyncioPool(_Counted):
    """Runs coroutines on one event loop in its own thread, at most ``max_concurrency`` at once.

    Same surface as :class:`ElasticPool`, for ``async def`` tasks: many calls share one loop.
    """

    def __init__(self, max_concurrency: int, name: str = "callq-asyncio") -> None:
        import asyncio

        self.max_threads = max_concurrency
        self.grow_after = 0.02
        self.threads_started = 1
        self._lock = threading.Lock()
        self._all_done = threading.Condition(self._lock)
        self._pending = 0
        self._busy = 0
        self._loop = asyncio.new_event_loop()
        self._sem: asyncio.Semaphore | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"{name}-loop", daemon=True)
        self._thread.start()
        self._ready.wait()

    def _serve(self) -> None:
        import asyncio

        asyncio.set_event_loop(self._loop)
        self._sem = asyncio.Semaphore(self.max_threads)
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    @property
    def threads(self) -> int:
        return 1 if self._thread.is_alive() else 0


    @property
    def idle(self) -> int:
        return self.max_threads - self._busy

    def grow_if_starved(self) -> None:
        return None

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> None:
        with self._lock:
            self._pending += 1
        self._loop.call_soon_threadsafe(self._start, fn, arg)

    def _start(self, fn: Callable[[Any], Any], arg: Any) -> None:
        self._loop.create_task(self._run(fn, arg))

    async def _run(self, fn: Callable[[Any], Any], arg: Any) -> None:
        assert self._sem is not None
        async with self._sem:
            with self._lock:
                self._pending -= 1
                self._busy += 1
            try:
                await fn(arg)
            except BaseException:  # noqa: BLE001
                log.exception("unexpected error in asyncio task")
            finally:
                with self._lock:
                    self._busy -= 1
                    if self._busy == 0 and self._pending == 0:
                        self._all_done.notify_all()


    def shutdown(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
