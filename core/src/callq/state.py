"""A small shared key-value store in the broker's own backing store.

Controls that must hold across processes use it: dedup (keys of calls that succeeded),
pause flags, scheduler tick locks, live-consumer registrations for distributed qps.
A broker offers one through the ``callq_state_store`` hook; brokers without a store of
their own (MQTT, RabbitMQ...) can point a task's ``state`` option at one that has.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class StateStore(Protocol):
    """Keys and values are strings. ``ttl`` in seconds; ``None`` keeps the key until deleted.

    Every method is atomic and thread-safe; the store is shared by every process (and host,
    for networked brokers) using the same broker.
    """

    def put(self, key: str, value: str, ttl: float | None = None, only_new: bool = False) -> bool:
        """Store ``value``; with ``only_new`` only if the key is absent (or expired).

        Returns True if the value was stored.
        """
        ...

    def get(self, key: str) -> str | None:
        """The value, or None if absent or expired."""
        ...

    def delete(self, key: str) -> bool:
        """Remove the key; True if it existed."""
        ...

    def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        """Add ``amount`` to an integer value (absent counts as 0) and return the result.

        ``ttl`` applies when the key is created.
        """
        ...

    def scan(self, prefix: str) -> dict[str, str]:
        """Every live key starting with ``prefix``, with its value."""
        ...


class MemoryState:
    """The memory broker's store (one per ``memory://`` name)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, tuple[str, float | None]] = {}

    def _live(self, key: str, now: float) -> tuple[str, float | None] | None:
        item = self._data.get(key)
        if item is not None and item[1] is not None and item[1] <= now:
            del self._data[key]
            return None
        return item

    def put(self, key: str, value: str, ttl: float | None = None, only_new: bool = False) -> bool:
        now = time.monotonic()
        with self._lock:
            if only_new and self._live(key, now) is not None:
                return False
            self._data[key] = (value, now + ttl if ttl is not None else None)
            return True

    def get(self, key: str) -> str | None:
        with self._lock:
            item = self._live(key, time.monotonic())
            return item[0] if item else None

    def delete(self, key: str) -> bool:
        with self._lock:
            return self._data.pop(key, None) is not None

    def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        now = time.monotonic()
        with self._lock:
            item = self._live(key, now)
            if item is None:
                value, expires = amount, (now + ttl if ttl is not None else None)
            else:
                value, expires = int(item[0]) + amount, item[1]
            self._data[key] = (str(value), expires)
            return value

    def scan(self, prefix: str) -> dict[str, str]:
        now = time.monotonic()
        with self._lock:
            keys = [k for k in self._data if k.startswith(prefix)]
            return {k: item[0] for k in keys if (item := self._live(k, now)) is not None}
