"""Timeout per call.

Threads: a watchdog gives up on a call that runs too long: it settles the call as failed with
TimeoutError at once (retried per policy) and raises TimeoutError inside its thread, which
stops Python code but not a blocking C call (only process mode can kill those). The raise
happens under the lock the call's thread takes when it leaves the call, so it can never land
in a later call of the same thread. asyncio: the task is cancelled.
"""

from __future__ import annotations

import asyncio
import ctypes
import heapq
import itertools
import logging
import threading
import time
from typing import Any

from ..context import CallContext
from ..options import TaskOptions
from . import Control

log = logging.getLogger("callq.worker")

_STASH = "callq.timeout"


class CallTimeout(TimeoutError):
    """Raised inside a thread whose call exceeded its timeout."""


def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               ctypes.py_object(exc) if exc is not None else None)


class _Watch:
    __slots__ = ("call", "thread_id", "finished", "fired")

    def __init__(self, call: CallContext, thread_id: int) -> None:
        self.call = call
        self.thread_id = thread_id
        self.finished = False
        self.fired = False


class Timeout(Control):
    name = "timeout"
    order = 900  # entered last: nothing runs between the function and its exit

    @classmethod
    def applies(cls, task_options: TaskOptions, options: Any) -> bool:
        return task_options.timeout is not None

    def start(self) -> None:
        self.seconds: float = self.consumer.options.timeout  # type: ignore[assignment]
        self._lock = threading.Lock()
        self._heap: list[tuple[float, int, _Watch]] = []
        self._seq = itertools.count()
        self._stopped = threading.Event()
        if not self.consumer.is_async:
            threading.Thread(target=self._watchdog, name=f"callq-{self.consumer.queue}-watchdog",
                             daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()

    # --- around the call ---------------------------------------------------------------------

    def enter(self, call: CallContext) -> None:
        if self.consumer.is_async:
            task = asyncio.current_task()
            assert task is not None
            fired = [False]

            def fire() -> None:
                fired[0] = True
                task.cancel()

            call.stash[_STASH] = (asyncio.get_running_loop().call_later(self.seconds, fire), fired)
            return
        watch = _Watch(call, threading.get_ident())
        call.stash[_STASH] = watch
        with self._lock:
            heapq.heappush(self._heap, (time.monotonic() + self.seconds, next(self._seq), watch))

    def exit(self, call: CallContext, error: BaseException | None) -> BaseException | None:
        entry = call.stash.get(_STASH)
        if entry is None:
            return None
        if isinstance(entry, tuple):  # asyncio
            handle, fired = entry
            handle.cancel()
            if fired[0] and isinstance(error, asyncio.CancelledError):
                self.consumer.count("timed_out")
                return TimeoutError(f"call exceeded its timeout of {self.seconds}s and was cancelled")
            return None
        while True:  # a pending CallTimeout may land anywhere in here: absorb it and go on
            try:
                with self._lock:
                    entry.finished = True
                    fired = entry.fired
                if fired:
                    _set_async_exc(entry.thread_id, None)  # clear one not delivered yet
                return None
            except CallTimeout:
                continue

    # --- the watchdog ------------------------------------------------------------------------

    def _watchdog(self) -> None:
        heap = self._heap
        while not self._stopped.is_set():
            expired: list[_Watch] = []
            with self._lock:
                now = time.monotonic()
                while heap and (heap[0][2].finished or heap[0][0] <= now):
                    _, _, watch = heapq.heappop(heap)
                    if not watch.finished and watch.call.claim():
                        watch.fired = True
                        _set_async_exc(watch.thread_id, CallTimeout)  # under the lock: see exit()
                        expired.append(watch)
                wait = min(0.05, heap[0][0] - now) if heap else 0.05
                if len(heap) > 1000:  # forget calls that ended on their own
                    heap[:] = [w for w in heap if not w[2].finished]
                    heapq.heapify(heap)
            for watch in expired:
                self.consumer.count("timed_out")
                log.warning("%s: call %s exceeded its timeout of %ss; abandoned (its thread runs on "
                            "until the function returns)", self.consumer.queue, watch.call.id, self.seconds)
                self.consumer.fail(watch.call, TimeoutError(f"call exceeded its timeout of {self.seconds}s"))
            self._stopped.wait(max(wait, 0.005))
