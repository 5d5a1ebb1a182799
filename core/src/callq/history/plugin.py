"""The call history plugin: one row per call outcome, written in batches from a thread.

Opt in with ``CALLQ_HISTORY_URL`` (a database URL, or ``1`` for the default sqlite file in
the user's data directory ``~/.local/share/callq/history.db``), read when the plugin manager
starts, or in code with :func:`callq.history.enable`. Retention: ``CALLQ_HISTORY_MAX_AGE``
(seconds, default 7 days) and ``CALLQ_HISTORY_MAX_ROWS`` (default 1,000,000).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import threading
import time
from collections import deque
from typing import Any

import orjson

from ..context import current
from ..hookspecs import hookimpl

log = logging.getLogger("callq.history")

HOST = socket.gethostname()
MAX_AGE = 7 * 86400.0
MAX_ROWS = 1_000_000


def default_url() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return "sqlite:///" + os.path.abspath(os.path.join(base, "callq", "history.db"))


#: a chunk of calls inserts the waiting rows itself once this many wait: the same work as
#: the writer thread's, without that thread holding the GIL while the calls wait for it
SYNC_ROWS = 500


class HistoryPlugin:
    """Collects rows in memory; under load the threads running chunks of calls insert them
    (``SYNC_ROWS`` at a time), else a background thread does every ``flush_interval`` seconds
    (at once when ``batch`` rows wait); it prunes old rows every ``prune_interval``."""

    def __init__(self, url: str | None = None, *, max_age: float | None = MAX_AGE, max_rows: int | None = MAX_ROWS,
                 flush_interval: float = 0.5, batch: int = 2000, prune_interval: float = 60.0) -> None:
        self.url = url or default_url()
        self.max_age = max_age
        self.max_rows = max_rows
        self.flush_interval = flush_interval
        self.batch = batch
        self.prune_interval = prune_interval
        self._rows: deque[tuple[Any, ...]] = deque()
        self._wake = threading.Event()
        self._done = threading.Condition()
        self._pending = 0
        self._pid = 0
        self._closed = False
        self._lock = threading.Lock()
        self._store: Any = None
        self._last_write = 0.0
        self.written = 0
        atexit.register(self.flush)

    @property
    def store(self) -> Any:
        if self._store is None:
            from .store import HistoryStore

            self._store = HistoryStore(self.url)
        return self._store

    @hookimpl
    def callq_after_calls(self, calls: list[Any]) -> None:
        rows = [row_of(call) for call in calls]
        if self._pid != os.getpid():
            self._start()
        with self._done:
            self._pending += len(rows)
            self._rows.extend(rows)
        if len(calls) > 1 and len(self._rows) >= SYNC_ROWS:
            self._write()
        elif len(self._rows) >= self.batch:
            self._wake.set()

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._wake = threading.Event()
            self._done = threading.Condition()
            self._pending = len(self._rows) if self._pid == 0 else 0
            if self._pid != 0:
                self._rows.clear()  # the parent's rows are the parent's to write
                self._store = None  # never share a connection pool across fork
            threading.Thread(target=self._loop, name="callq-history", daemon=True).start()
            self._pid = os.getpid()

    def _loop(self) -> None:
        pruned = 0.0  # prune once at start, then every prune_interval
        while not self._closed:
            woke = self._wake.wait(self.flush_interval)
            self._wake.clear()
            if woke or time.monotonic() - self._last_write >= self.flush_interval:
                self._write()
            if self._closed:
                return
            if time.monotonic() - pruned > self.prune_interval:
                pruned = time.monotonic()
                try:
                    self.store.prune(self.max_age, self.max_rows)
                except Exception as exc:  # noqa: BLE001
                    log.warning("pruning call history failed: %s: %s", type(exc).__name__, exc)

    def _write(self) -> None:
        self._last_write = time.monotonic()
        while self._rows:
            chunk = []
            pop = self._rows.popleft
            try:
                while len(chunk) < self.batch:
                    chunk.append(pop())
            except IndexError:
                pass
            try:
                self.store.insert_many(chunk)
                written = len(chunk)
            except Exception as exc:  # noqa: BLE001 - the database may be down: keep the calls running
                log.error("could not write %d call history row(s) to %s: %s: %s", len(chunk),
                          self.url.split("://", 1)[0] + "://...", type(exc).__name__, exc)
                written = 0
            with self._done:
                self.written += written
                self._pending -= len(chunk)
                self._done.notify_all()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every collected row was written (or given up on)."""
        if self._pid != os.getpid():
            return True
        self._wake.set()
        with self._done:
            return self._done.wait_for(lambda: self._pending <= 0, timeout)

    @hookimpl
    def callq_before_publish(self, queue: str, messages: list[dict[str, Any]]) -> None:
        """Calls published from inside a call record it as their parent."""
        call = current()
        if call is not None and call.id:
            for message in messages:
                meta = message.get("_callq")
                if isinstance(meta, dict):
                    meta.setdefault("parent", call.id)

    def close(self) -> None:
        """Write what is collected, then stop the writer thread."""
        self.flush()
        self._closed = True
        self._wake.set()

    @hookimpl
    def callq_consumer_started(self, consumer: Any) -> None:
        # open the store (import SQLAlchemy, create the table) now, not in the first chunk of calls
        if self._pid != os.getpid():
            self._start()  # a forked child gets its own store, never the parent's pool
        try:
            _ = self.store
        except Exception as exc:  # noqa: BLE001 - the database may be down: the writes retry
            log.warning("call history store %s not reachable at start: %s: %s",
                        self.url.split("://", 1)[0] + "://...", type(exc).__name__, exc)

    @hookimpl
    def callq_consumer_stopped(self, consumer: Any) -> None:
        self.flush()


def _json(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return orjson.dumps(value, default=repr).decode()
    except (TypeError, ValueError):
        return json.dumps(repr(value))


def row_of(call: Any) -> tuple[Any, ...]:
    """The history row of a call's outcome, in :data:`callq.history.store.INSERT_COLUMNS` order."""
    exc = call.error
    meta = call.meta or {}
    outcome = call.outcome or "unknown"
    published = meta.get("published_at")
    parent = meta.get("parent")
    if exc is None:
        error_type = error = tb = None
    else:
        error_type, error = type(exc).__name__, str(exc)
        tb = getattr(call, "traceback", None)
        if tb is None:
            import traceback

            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return (call.id, call.queue, call.task.name, _json(call.kwargs), outcome,
            _json(call.result) if outcome == "done" else None, error_type, error, tb,
            getattr(call, "reason", None), call.attempt, HOST, os.getpid(),
            published if isinstance(published, (int, float)) else None,
            call.started_at or None, call.finished_at or time.time(),
            parent if isinstance(parent, str) else None)


NAME = "callq.default.history"
_enabled: HistoryPlugin | None = None


def enable(url: str | None = None, **options: Any) -> HistoryPlugin:
    """Record every call of this process's consumers from now on (replaces the default plugin)."""
    from ..plugins import get_plugin_manager, register, unregister

    global _enabled
    old = get_plugin_manager().get_plugin(NAME)
    if old is not None:
        unregister(old)
    _enabled = HistoryPlugin(url, **options)
    _ = _enabled.store  # a bad URL or a missing driver fails here, not in the writer thread
    register(_enabled, name=NAME)
    return _enabled


def disable() -> None:
    from ..plugins import get_plugin_manager, register, unregister

    global _enabled
    old = get_plugin_manager().get_plugin(NAME)
    if old is not None:
        unregister(old)
    register(_Off(), name=NAME)
    if _enabled is not None:
        _enabled.close()
    _enabled = None


class _Off:
    """Stands for the history plugin when it is not enabled: no hooks, so no cost."""


def from_env() -> Any:
    """The default plugin: a :class:`HistoryPlugin` if ``CALLQ_HISTORY_URL`` is set, else inert."""
    url = os.environ.get("CALLQ_HISTORY_URL", "").strip()
    if not url or url.lower() in ("0", "off", "false", "no"):
        return _Off()
    if url.lower() in ("1", "on", "true", "yes", "default"):
        url = ""
    max_age = float(os.environ.get("CALLQ_HISTORY_MAX_AGE", MAX_AGE))
    max_rows = int(os.environ.get("CALLQ_HISTORY_MAX_ROWS", MAX_ROWS))
    return HistoryPlugin(url or None, max_age=max_age, max_rows=max_rows)
