"""Process-wide helpers of the sqlite broker: connection pool, wake-up signal, fork safety."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable

from callq.errors import BrokerError

log = logging.getLogger("callq.sqlite")

_MAX_IDLE_CONNECTIONS = 16


class Signal:
    """Wakes fetchers of this process when something on the same file changed.

    Other processes cannot notify us; fetch polls for their changes.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.generation = 0

    def notify(self) -> None:
        with self.cond:
            self.generation += 1
            self.cond.notify_all()

    def wait(self, seen: int, seconds: float) -> None:
        with self.cond:
            if self.generation == seen:
                self.cond.wait(seconds)


_signals: dict[str, Signal] = {}
_signals_lock = threading.Lock()
_fork_generation = 0


def signal_for(path: str) -> Signal:
    """The one :class:`Signal` of this process for the file ``path``."""
    with _signals_lock:
        sig = _signals.get(path)
        if sig is None:
            sig = _signals[path] = Signal()
        return sig


def _after_fork_in_child() -> None:
    global _fork_generation, _signals_lock
    _fork_generation += 1
    _signals_lock = threading.Lock()
    _signals.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class ConnectionPool:
    """sqlite connections to one file, lent to one thread at a time and reused.

    In a forked child the inherited connections are dropped unused (never closed: they
    belong to the parent) and ``on_fork`` is called before the first connection is lent.
    """

    def __init__(self, path: str, busy_timeout: float, synchronous: str,
                 on_fork: Callable[[], None]) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.synchronous = synchronous
        self._on_fork = on_fork
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._fork_generation = _fork_generation
        self.closed = False

    @property
    def forked(self) -> bool:
        """True in a child forked since the pool was made (or last used)."""
        return self._fork_generation != _fork_generation

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # pooled: used by one thread at a time
                cached_statements=256,
            )
        except sqlite3.Error as exc:
            raise BrokerError(f"sqlite: cannot open {self.path}: {exc}") from exc
        try:
            mode = self._enable_wal(db)
            if mode != "wal":
                log.warning("sqlite %s: WAL mode refused (journal_mode=%s)", self.path, mode)
            db.execute(f"PRAGMA synchronous={self.synchronous}")
        except sqlite3.Error as exc:
            db.close()
            raise BrokerError(f"sqlite: cannot set up {self.path}: {exc}") from exc
        return db

    def _enable_wal(self, db: sqlite3.Connection) -> str:
        # Switching a new file to WAL takes an exclusive lock, and SQLite answers "database
        # is locked" at once (no busy handler) when several processes switch it together.
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                mode = str(db.execute("PRAGMA journal_mode").fetchone()[0]).lower()
                if mode == "wal":
                    return mode
                return str(db.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

    def checkout(self) -> sqlite3.Connection:
        if self.closed:
            raise BrokerError(f"sqlite broker {self.path} is closed")
        if self._fork_generation != _fork_generation:  # self.forked, inlined: hot path
            # Locks may have been held by a parent's thread; the parent's state is not ours.
            self._lock = threading.Lock()
            self._idle = []
            self._fork_generation = _fork_generation
            self._on_fork()
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._connect()

    def checkin(self, db: sqlite3.Connection) -> None:
        if db.in_transaction:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:  # pragma: no cover - broken connection
                db.close()
                return
        with self._lock:
            if not self.closed and len(self._idle) < _MAX_IDLE_CONNECTIONS:
                self._idle.append(db)
                return
        db.close()

    def close(self) -> None:
        with self._lock:
            self.closed = True
            idle, self._idle = self._idle, []
        if self._fork_generation != _fork_generation:
            return  # the parent's connections: not ours to close
        for db in idle:
            db.close()
