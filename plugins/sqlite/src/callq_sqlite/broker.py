"""``sqlite:///path.db``: a persistent queue in one sqlite file, shared by the processes of one machine.

One table holds every queue. A row is *waiting* (``owner`` NULL) or *leased* (``owner`` set).
``available_at`` is when a waiting row may be delivered, and for a leased row when its
lease ends; so one condition, ``available_at <= now``, finds both ready rows and rows whose
consumer died (stopped heartbeating), and one index serves the fetch.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from callq.broker import BrokerBase, Capabilities, Delivery
from callq.errors import BrokerError, ConfigError
from callq.url import BrokerURL

log = logging.getLogger("callq.sqlite")

TABLE = "callq_messages"

_SCHEMA = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a stale tag cannot hit a new row
        queue TEXT NOT NULL,
        priority INTEGER NOT NULL,
        available_at REAL NOT NULL,            -- waiting: deliverable from; leased: lease end
        owner TEXT,                            -- consumer holding the lease; NULL while waiting
        deliveries INTEGER NOT NULL DEFAULT 0,
        body BLOB NOT NULL
    )""",
    # Serves fetch (queue=?, ordered by priority, available_at <= now first in each priority),
    # size and purge (owner is in the index, so they never read the bodies).
    f"CREATE INDEX IF NOT EXISTS {TABLE}_fetch ON {TABLE} (queue, priority DESC, available_at, owner)",
)

_INSERT = f"INSERT INTO {TABLE} (queue, priority, available_at, body) VALUES (?, ?, ?, ?)"
_ANY_READY = f"SELECT 1 FROM {TABLE} WHERE queue = ? AND available_at <= ? LIMIT 1"
_SELECT_READY = (
    f"SELECT id, body, deliveries, owner FROM {TABLE} WHERE queue = ? AND available_at <= ? "
    "ORDER BY priority DESC, available_at LIMIT ?"
)
_NEXT_DUE = f"SELECT min(available_at) FROM {TABLE} WHERE queue = ?"
_WAITING = "queue = ? AND (owner IS NULL OR available_at <= ?)"
_SIZE = f"SELECT count(*) FROM {TABLE} WHERE {_WAITING}"
_PURGE = f"DELETE FROM {TABLE} WHERE {_WAITING}"

#: ids per ``IN (...)`` list; below every sqlite build's variable limit (999 before 3.32)
_CHUNK = 500
_MAX_IDLE_CONNECTIONS = 16

_KNOWN_PARAMS = ("lease", "heartbeat", "poll", "busy_timeout", "synchronous")


# --- process-wide helpers ------------------------------------------------------------------


class _Signal:
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


_signals: dict[str, _Signal] = {}
_signals_lock = threading.Lock()
_fork_generation = 0


def _signal_for(path: str) -> _Signal:
    with _signals_lock:
        sig = _signals.get(path)
        if sig is None:
            sig = _signals[path] = _Signal()
        return sig


def _after_fork_in_child() -> None:
    global _fork_generation, _signals_lock
    _fork_generation += 1
    _signals_lock = threading.Lock()
    _signals.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def database_path(url: BrokerURL) -> str:
    """The absolute file path of a ``sqlite:`` URL (SQLAlchemy's convention).

    ``sqlite:///rel/x.db`` is relative to the current directory, ``sqlite:////abs/x.db``
    is absolute.
    """
    if url.host or url.port:
        raise ConfigError(
            f"broker URL {url}: a sqlite URL has no host; use sqlite:///relative/file.db "
            "or sqlite:////absolute/file.db"
        )
    path = url.path[1:] if url.path.startswith("/") else url.path
    if not path or path == ":memory:" or path.endswith("/"):
        raise ConfigError(
            f"broker URL {url}: name a database file, e.g. sqlite:///callq.db or "
            "sqlite:////var/lib/callq/callq.db (in-memory databases cannot be shared)"
        )
    return os.path.abspath(path)


# --- the broker ------------------------------------------------------------------------------


class SqliteBroker(BrokerBase):
    """Broker on a sqlite file: acks with leases, delays, priorities, several processes.

    Thread-safe: each operation borrows a sqlite connection from a small pool, so fetch,
    ack, publish and heartbeat may run in different threads at once.
    """

    def __init__(self, url: BrokerURL) -> None:
        super().__init__(url)
        url.check_params(_KNOWN_PARAMS)
        self.lease = url.float_param("lease", 30.0, minimum=0.0)
        if self.lease < 0.1:
            raise ConfigError(f"broker URL {url}: parameter lease must be >= 0.1 seconds, got {self.lease}")
        heartbeat = url.float_param("heartbeat", self.lease / 3, minimum=0.0)
        if not 0 < heartbeat < self.lease:
            raise ConfigError(
                f"broker URL {url}: parameter heartbeat must be > 0 and below lease ({self.lease}), "
                f"got {heartbeat}"
            )
        self.heartbeat_interval = heartbeat  # type: ignore[misc]  # per instance: follows lease
        self.poll = url.float_param("poll", 0.05, minimum=0.0)
        if self.poll <= 0:
            raise ConfigError(f"broker URL {url}: parameter poll must be > 0, got {self.poll}")
        self.busy_timeout = url.float_param("busy_timeout", 30.0, minimum=0.0)
        self.synchronous = url.str_param("synchronous", "normal", choices=("normal", "full")).upper()
        self.path = database_path(url)
        self.capabilities = Capabilities(
            acks=True,
            persistent=True,
            distributed=True,
            backlog=True,
            native_delay=True,
            priority=True,
            exact_size=True,
            redelivery_timeout=self.lease + self.poll + 0.5,
        )
        #: identifies this consumer's leases in the shared file
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._signal = _signal_for(self.path)
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._fork_generation = _fork_generation
        self._inflight: set[int] = set()
        self._recovered = 0
        self._closed = False
        directory = os.path.dirname(self.path)
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"broker URL {url}: cannot create directory {directory}: {exc}") from None
        db = self._checkout()
        try:
            self._create_schema(db)
        finally:
            self._checkin(db)

    def __repr__(self) -> str:
        return f"SqliteBroker({self.path!r}, owner={self.owner!r})"

    # --- connections ------------------------------------------------------------------------

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
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("sqlite %s: WAL mode refused (journal_mode=%s)", self.path, mode)
            db.execute(f"PRAGMA synchronous={self.synchronous}")
        except sqlite3.Error as exc:
            db.close()
            raise BrokerError(f"sqlite: cannot set up {self.path}: {exc}") from exc
        return db

    def _checkout(self) -> sqlite3.Connection:
        if self._closed:
            raise BrokerError(f"sqlite broker {self.path} is closed")
        if self._fork_generation != _fork_generation:
            # Connections inherited over fork() must never be used (nor closed) in the child.
            with self._lock:
                self._idle = []
                self._inflight = set()
                self._fork_generation = _fork_generation
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._connect()

    def _checkin(self, db: sqlite3.Connection) -> None:
        if db.in_transaction:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:  # pragma: no cover - broken connection
                db.close()
                return
        with self._lock:
            if not self._closed and len(self._idle) < _MAX_IDLE_CONNECTIONS:
                self._idle.append(db)
                return
        db.close()

    def _create_schema(self, db: sqlite3.Connection) -> None:
        try:
            db.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                db.execute(statement)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise BrokerError(f"sqlite: cannot create the schema in {self.path}: {exc}") from exc

    def _fail(self, operation: str, exc: sqlite3.Error) -> BrokerError:
        return BrokerError(f"sqlite {operation} on {self.path} failed: {exc}")

    def _update_ids(self, db: sqlite3.Connection, sql: str, head: tuple[Any, ...], ids: Sequence[int]) -> int:
        """Run ``sql`` (ending in ``id IN ({})``) over ``ids`` in chunks, in one transaction."""
        if len(ids) <= _CHUNK:
            return db.execute(sql.format(",".join("?" * len(ids))), (*head, *ids)).rowcount
        changed = 0
        db.execute("BEGIN IMMEDIATE")
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            changed += db.execute(sql.format(",".join("?" * len(chunk))), (*head, *chunk)).rowcount
        db.execute("COMMIT")
        return changed

    # --- broker hooks ----------------------------------------------------------------------

    def callq_publish(self, queue: str, bodies: Sequence[bytes], delay: float, priority: int | None) -> int:
        if not bodies:
            return 0
        at = time.time() + max(delay, 0.0)
        prio = priority or 0
        db = self._checkout()
        try:
            if len(bodies) == 1:
                db.execute(_INSERT, (queue, prio, at, bodies[0]))
            else:
                db.execute("BEGIN IMMEDIATE")
                db.executemany(_INSERT, [(queue, prio, at, body) for body in bodies])
                db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._fail("publish", exc) from exc
        finally:
            self._checkin(db)
        self._signal.notify()
        return len(bodies)

    def callq_fetch(self, queue: str, max_n: int, timeout: float) -> list[Delivery]:
        if max_n < 1:
            return []
        deadline = time.monotonic() + max(timeout, 0.0)
        signal = self._signal
        pause = 0.001
        seen_version: int | None = None
        next_due = 0.0
        db = self._checkout()
        try:
            while True:
                generation = signal.generation
                # data_version changes when another connection (any process) committed.
                version = db.execute("PRAGMA data_version").fetchone()[0]
                if version != seen_version or time.time() >= next_due:
                    seen_version = version
                    got = self._claim(db, queue, max_n)
                    if got:
                        return got
                    due = db.execute(_NEXT_DUE, (queue,)).fetchone()[0]
                    next_due = math.inf if due is None else due
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                wait = min(pause, remaining, max(next_due - time.time(), 0.0005))
                signal.wait(generation, wait)
                pause = min(pause * 2, self.poll)
        except sqlite3.Error as exc:
            raise self._fail("fetch", exc) from exc
        finally:
            self._checkin(db)

    def _claim(self, db: sqlite3.Connection, queue: str, max_n: int) -> list[Delivery]:
        # A plain read first: idle consumers must not queue up for the write lock.
        if db.execute(_ANY_READY, (queue, time.time())).fetchone() is None:
            return []
        db.execute("BEGIN IMMEDIATE")
        now = time.time()
        rows = db.execute(_SELECT_READY, (queue, now, max_n)).fetchall()
        if not rows:
            db.execute("COMMIT")
            return []
        ids = [row[0] for row in rows]
        db.execute(
            f"UPDATE {TABLE} SET owner = ?, available_at = ?, deliveries = deliveries + 1 "
            f"WHERE id IN ({','.join('?' * len(ids))})",
            (self.owner, now + self.lease, *ids),
        )
        db.execute("COMMIT")
        recovered = sum(1 for row in rows if row[3] is not None)
        with self._lock:
            self._inflight.update(ids)
            self._recovered += recovered
        if recovered:
            log.info("sqlite %s: recovered %d message(s) of queue %r from expired leases",
                     self.path, recovered, queue)
        return [Delivery(body, queue, msg_id, deliveries > 0) for msg_id, body, deliveries, _ in rows]

    def _forget(self, deliveries: Iterable[Delivery]) -> list[int]:
        ids = [d.tag for d in deliveries]
        with self._lock:
            self._inflight.difference_update(ids)
        return ids

    def callq_ack(self, deliveries: Sequence[Delivery]) -> int:
        ids = self._forget(deliveries)
        if not ids:
            return 0
        db = self._checkout()
        try:
            return self._update_ids(db, f"DELETE FROM {TABLE} WHERE owner = ? AND id IN ({{}})",
                                    (self.owner,), ids)
        except sqlite3.Error as exc:
            raise self._fail("ack", exc) from exc
        finally:
            self._checkin(db)

    def callq_requeue(self, deliveries: Sequence[Delivery], delay: float) -> int:
        ids = self._forget(deliveries)
        if not ids:
            return 0
        db = self._checkout()
        try:
            changed = self._release(db, ids, time.time() + max(delay, 0.0))
        except sqlite3.Error as exc:
            raise self._fail("requeue", exc) from exc
        finally:
            self._checkin(db)
        self._signal.notify()
        return changed

    def _release(self, db: sqlite3.Connection, ids: Sequence[int], at: float) -> int:
        return self._update_ids(
            db, f"UPDATE {TABLE} SET owner = NULL, available_at = ? WHERE owner = ? AND id IN ({{}})",
            (at, self.owner), ids)

    def callq_heartbeat(self) -> int:
        with self._lock:
            ids = sorted(self._inflight)
            recovered, self._recovered = self._recovered, 0
        if not ids:
            return recovered
        db = self._checkout()
        try:
            kept = self._update_ids(
                db, f"UPDATE {TABLE} SET available_at = ? WHERE owner = ? AND id IN ({{}})",
                (time.time() + self.lease, self.owner), ids)
            if kept < len(ids):
                self._drop_lost_leases(db, ids)
        except sqlite3.Error as exc:
            raise self._fail("heartbeat", exc) from exc
        finally:
            self._checkin(db)
        return recovered

    def _drop_lost_leases(self, db: sqlite3.Connection, ids: Sequence[int]) -> None:
        """Forget in-flight ids whose lease expired and went to another consumer (or were purged)."""
        still_mine: set[int] = set()
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            still_mine.update(row[0] for row in db.execute(
                f"SELECT id FROM {TABLE} WHERE owner = ? AND id IN ({marks})", (self.owner, *chunk)))
        lost = set(ids) - still_mine
        with self._lock:
            self._inflight.difference_update(lost)
        log.warning("sqlite %s: lost the lease of %d message(s) (heartbeat too late?); "
                    "they may run twice", self.path, len(lost))

    def callq_purge(self, queue: str) -> int:
        db = self._checkout()
        try:
            return db.execute(_PURGE, (queue, time.time())).rowcount
        except sqlite3.Error as exc:
            raise self._fail("purge", exc) from exc
        finally:
            self._checkin(db)

    def callq_size(self, queue: str) -> int:
        db = self._checkout()
        try:
            return int(db.execute(_SIZE, (queue, time.time())).fetchone()[0])
        except sqlite3.Error as exc:
            raise self._fail("size", exc) from exc
        finally:
            self._checkin(db)

    def callq_close(self) -> bool:
        if self._closed:
            return True
        try:
            with self._lock:
                ids = sorted(self._inflight)
                self._inflight.clear()
            if ids and self._fork_generation == _fork_generation:
                db = self._checkout()
                try:
                    self._release(db, ids, time.time())
                except sqlite3.Error as exc:
                    log.warning("sqlite %s: could not release %d message(s) on close (%s); "
                                "they come back when their lease ends", self.path, len(ids), exc)
                finally:
                    self._checkin(db)
                self._signal.notify()
        finally:
            with self._lock:
                self._closed = True
                idle, self._idle = self._idle, []
            for db in idle:
                db.close()
        return True
