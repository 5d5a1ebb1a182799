"""Entries an ack read for the next fetch of their queue (see the broker's module docstring)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from callq.broker import Delivery

log = logging.getLogger("callq.redis_stream")

#: entries read ahead go back to the stream if no fetch takes them within this (seconds)
READY_FOR = 0.5


class ReadAhead:
    """Per queue, entries read with an ack and not yet handed out; a thread gives back those
    no fetch took within READY_FOR (the worker stopped, or paused, after its last ack)."""

    def __init__(self, give_back: Callable[[list[Delivery]], object], name: str) -> None:
        self._give_back = give_back
        self._name = name
        self._lock = threading.Lock()
        self._ready: dict[str, tuple[float, list[Delivery]]] = {}  # queue -> (read at, entries)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def __contains__(self, queue: str) -> bool:
        return queue in self._ready

    def count(self, queue: str) -> int:
        ready = self._ready.get(queue)
        return len(ready[1]) if ready else 0

    def put(self, queue: str, entries: list[Delivery]) -> None:
        if not entries:
            return
        with self._lock:
            # appended, never replaced: entries dropped here would stay pending to a live consumer
            at, rest = self._ready.get(queue, (time.monotonic(), []))
            self._ready[queue] = (at, rest + entries)
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._loop, name="callq-redis-stream-ready", daemon=True)
                self._thread.start()

    def pop(self, queue: str, max_n: int) -> list[Delivery]:
        """Up to ``max_n`` entries read ahead for ``queue``, in stream order."""
        with self._lock:
            return self._pop(queue, max_n)

    def _pop(self, queue: str, max_n: int) -> list[Delivery]:
        at, ready = self._ready.get(queue, (0.0, []))
        if len(ready) > max_n:
            self._ready[queue] = (at, ready[max_n:])
            return ready[:max_n]
        self._ready.pop(queue, None)
        return ready

    def close(self) -> None:
        """Stop the thread and forget the entries (the broker's close gives back all it holds)."""
        self._stop.set()
        with self._lock:
            self._ready.clear()

    def _loop(self) -> None:
        while not self._stop.wait(READY_FOR / 2):
            now = time.monotonic()
            with self._lock:
                back = {q: self._pop(q, len(ds)) for q, (at, ds) in list(self._ready.items()) if now - at >= READY_FOR}
            for queue, entries in back.items():
                try:
                    self._give_back(entries)
                except Exception as exc:  # noqa: BLE001 - kept for the next fetch; close gives them back
                    log.warning("redis %s: could not give back %d entr(ies) read ahead (%s)", self._name,
                                len(entries), exc)
                    with self._lock:
                        at, rest = self._ready.get(queue, (time.monotonic(), []))
                        self._ready[queue] = (at, entries + rest)
