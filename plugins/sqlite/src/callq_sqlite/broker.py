"""``sqlite:///path.db``: a persistent queue in one sqlite file, shared by the processes of one machine.

One table holds every queue. A row is *waiting* (``claim`` NULL) or *leased* (``claim`` set
to the random number of the fetch that took it). ``available_at`` is when a waiting row
may be delivered, and for a leased row when its lease ends; so one condition,
``available_at <= now``, finds both ready rows and rows whose consumer died (stopped
heartbeating), and one index serves fetch, size and purge.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from callq.broker import BrokerBase, Capabilities, Delivery
from callq.errors import BrokerError, ConfigError
from callq.state import StateStore
from callq.url import BrokerURL

from .state import STATE_SCHEMA, SqliteState

log = logging.getLogger("callq.sqlite")

TABLE = "callq_messages"

_SCHEMA = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        id INTEGER PRIMARY KEY,
        queue TEXT NOT NULL,
        priority INTEGER NOT NULL,
        available_at REAL NOT NULL,       -- waiting: deliverable from; leased: lease end
        claim INTEGER,                    -- random id of the fetch holding the lease; NULL while waiting
        redelivered INTEGER NOT NULL DEFAULT 0,  -- 1 once requeued or released
        body BLOB NOT NULL
    )""",
    # Serves fetch (a range seek per queue and priority on available_at <= now), next-due,
    # size and purge (claim is in the index, so they never read the table).
    f"CREATE INDEX IF NOT EXISTS {TABLE}_fetch ON {TABLE} (queue, priority DESC, available_at, claim)",
)

#: ``PRAGMA user_version`` of the message layout; a file with another layout is refused.
#: Additive changes that every reader of the layout can ignore (the ``callq_state`` table,
#: created by ``CREATE TABLE IF NOT EXISTS`` on open) keep the number, so a file stays
#: usable by older and newer callq-sqlite at once; see docs/brokers/sqlite.md.
SCHEMA_VERSION = 1

_INSERT = f"INSERT INTO {TABLE} (queue, priority, available_at, body) VALUES (?, ?, ?, ?)"
# Every statement below seeks the index; none scans a queue's rows (a queue may hold a
# large backlog of delayed messages). Priorities are walked one by one, highest first.
_TOP_PRIORITY = f"SELECT max(priority) FROM {TABLE} WHERE queue = ?"
_NEXT_PRIORITY = f"SELECT max(priority) FROM {TABLE} WHERE queue = ? AND priority < ?"
_SELECT_READY = (
    f"SELECT id, body, redelivered, claim FROM {TABLE} "
    "WHERE queue = ? AND priority = ? AND available_at <= ? ORDER BY available_at LIMIT ?"
)
# When the next row of a queue becomes available (NULL: the queue is empty).
_NEXT_DUE = f"""WITH RECURSIVE levels(prio) AS (
    SELECT max(priority) FROM {TABLE} WHERE queue = ?1
    UNION ALL
    SELECT (SELECT max(priority) FROM {TABLE} WHERE queue = ?1 AND priority < levels.prio)
    FROM levels WHERE levels.prio IS NOT NULL
)
SELECT min((SELECT min(available_at) FROM {TABLE} WHERE queue = ?1 AND priority = levels.prio))
FROM levels WHERE levels.prio IS NOT NULL"""
_WAITING = "queue = ? AND (claim IS NULL OR available_at <= ?)"
_CLAIM = f"UPDATE {TABLE} SET claim = ?, available_at = ? WHERE id IN ({{}})"
_ACK = f"DELETE FROM {TABLE} WHERE claim = ? AND id IN ({{}})"
_RELEASE = f"UPDATE {TABLE} SET claim = NULL, available_at = ?, redelivered = 1 WHERE claim = ? AND id IN ({{}})"
_EXTEND = f"UPDATE {TABLE} SET available_at = ? WHERE claim = ? AND id IN ({{}})"
_STILL_MINE = f"SELECT id FROM {TABLE} WHERE claim = ? AND id IN ({{}})"
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


def _new_claim() -> int:
    """A random number in [1, 2**31), from os.urandom so forks do not repeat it.

    It only has to differ from the other claims *of the same row id* (every statement
    matches claim and id together), so 31 bits suffice; a 4-byte integer keeps the
    row and index entry small when a claim stamps them.
    """
    return int.from_bytes(os.urandom(4), "big") >> 1 or 1


def _marks(n: int) -> str:
    return ",".join("?" * n)


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
            shared_state=True,
            redelivery_timeout=self.lease + self.poll + 0.5,
        )
        self._signal = _signal_for(self.path)
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._fork_generation = _fork_generation
        self._inflight: dict[int, int] = {}  # row id -> claim, fetched and not acked/requeued
        self._backlog: set[str] = set()  # queues whose last fetch came back full
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
        self._state = SqliteState(self)

    def __repr__(self) -> str:
        return f"SqliteBroker({self.path!r})"

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
            self._after_fork()
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._connect()

    def _after_fork(self) -> None:
        # Inherited sqlite connections must never be used (nor closed) in the child, and
        # the parent's leases are not ours; locks may have been held by a parent's thread.
        self._lock = threading.Lock()
        self._idle = []
        self._inflight = {}
        self._recovered = 0
        self._signal = _signal_for(self.path)
        self._fork_generation = _fork_generation

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
            version = db.execute("PRAGMA user_version").fetchone()[0]
            has_table = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)).fetchone()
            if has_table and version != SCHEMA_VERSION:
                raise ConfigError(
                    f"sqlite file {self.path} holds callq queues of layout {version}; this "
                    f"callq-sqlite uses layout {SCHEMA_VERSION}: drain it with the callq-sqlite "
                    "that wrote it, or use another file")
            for statement in (*_SCHEMA, *STATE_SCHEMA):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise BrokerError(f"sqlite: cannot create the schema in {self.path}: {exc}") from exc

    def _fail(self, operation: str, exc: sqlite3.Error) -> BrokerError:
        return BrokerError(f"sqlite {operation} on {self.path} failed: {exc}")

    @staticmethod
    def _by_claim(db: sqlite3.Connection, sql: str, head: tuple[Any, ...], by_claim: dict[int, list[int]]) -> int:
        """Run ``sql`` (``... claim = ? AND id IN ({})``) per claim, in chunks of ids, in one
        transaction; ``head`` are the parameters before the claim. Return the rows changed."""
        statements = [
            (claim, ids[start:start + _CHUNK])
            for claim, ids in by_claim.items() for start in range(0, len(ids), _CHUNK)
        ]
        if len(statements) == 1:
            claim, ids = statements[0]
            return db.execute(sql.format(_marks(len(ids))), (*head, claim, *ids)).rowcount
        changed = 0
        db.execute("BEGIN IMMEDIATE")
        for claim, ids in statements:
            changed += db.execute(sql.format(_marks(len(ids))), (*head, claim, *ids)).rowcount
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
                # data_version changes when another connection (any process) committed; in
                # between only the clock can make rows ready, at ``next_due``.
                version = db.execute("PRAGMA data_version").fetchone()[0]
                if version != seen_version or time.time() >= next_due:
                    seen_version = version
                    if queue not in self._backlog:  # else a claim is likely to succeed: skip the look
                        due = db.execute(_NEXT_DUE, (queue,)).fetchone()[0]
                        next_due = math.inf if due is None else due
                    if queue in self._backlog or next_due <= time.time():
                        got = self._claim(db, queue, max_n)
                        if got:
                            return got
                        next_due = 0.0  # raced with another consumer: look again
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                signal.wait(generation, min(pause, remaining, max(next_due - time.time(), 0.0005)))
                pause = min(pause * 2, self.poll)
        except sqlite3.Error as exc:
            raise self._fail("fetch", exc) from exc
        finally:
            self._checkin(db)

    def _claim(self, db: sqlite3.Connection, queue: str, max_n: int) -> list[Delivery]:
        db.execute("BEGIN IMMEDIATE")
        now = time.time()
        rows: list[tuple[int, bytes, int, int | None]] = []
        prio = db.execute(_TOP_PRIORITY, (queue,)).fetchone()[0]
        while prio is not None:
            rows += db.execute(_SELECT_READY, (queue, prio, now, max_n - len(rows))).fetchall()
            if len(rows) >= max_n:
                break
            prio = db.execute(_NEXT_PRIORITY, (queue, prio)).fetchone()[0]
        if not rows:
            db.execute("COMMIT")
            self._backlog.discard(queue)
            return []
        claim = _new_claim()
        ids = [row[0] for row in rows]
        until = now + self.lease
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            db.execute(_CLAIM.format(_marks(len(chunk))), (claim, until, *chunk))
        db.execute("COMMIT")
        if len(rows) == max_n:
            self._backlog.add(queue)
        else:
            self._backlog.discard(queue)
        recovered = sum(1 for row in rows if row[3] is not None)
        with self._lock:
            self._inflight.update(dict.fromkeys(ids, claim))
            self._recovered += recovered
        if recovered:
            log.info("sqlite %s: recovered %d message(s) of queue %r from expired leases",
                     self.path, recovered, queue)
        # The tag is (row id, claim): a row id can be reused after a delete, the pair cannot.
        # A row seen before was requeued, released, or leased by a consumer that died.
        return [Delivery(body, queue, (msg_id, claim), bool(again) or old_claim is not None)
                for msg_id, body, again, old_claim in rows]

    def _forget(self, deliveries: Iterable[Delivery]) -> dict[int, list[int]]:
        """Drop ``deliveries`` from the in-flight set; return their ids grouped by claim."""
        by_claim: dict[int, list[int]] = {}
        inflight = self._inflight
        with self._lock:
            for d in deliveries:
                msg_id, claim = d.tag
                if inflight.get(msg_id) == claim:
                    del inflight[msg_id]
                ids = by_claim.get(claim)
                if ids is None:
                    by_claim[claim] = [msg_id]
                else:
                    ids.append(msg_id)
        return by_claim

    def callq_ack(self, deliveries: Sequence[Delivery]) -> int:
        by_claim = self._forget(deliveries)
        if not by_claim:
            return 0
        db = self._checkout()
        try:
            return self._by_claim(db, _ACK, (), by_claim)
        except sqlite3.Error as exc:
            raise self._fail("ack", exc) from exc
        finally:
            self._checkin(db)

    def callq_requeue(self, deliveries: Sequence[Delivery], delay: float) -> int:
        by_claim = self._forget(deliveries)
        if not by_claim:
            return 0
        db = self._checkout()
        try:
            changed = self._by_claim(db, _RELEASE, (time.time() + max(delay, 0.0),), by_claim)
        except sqlite3.Error as exc:
            raise self._fail("requeue", exc) from exc
        finally:
            self._checkin(db)
        self._signal.notify()
        return changed

    def _inflight_by_claim(self) -> dict[int, list[int]]:
        by_claim: dict[int, list[int]] = {}
        with self._lock:
            for msg_id, claim in self._inflight.items():
                by_claim.setdefault(claim, []).append(msg_id)
        return by_claim

    def callq_heartbeat(self) -> int:
        by_claim = self._inflight_by_claim()
        with self._lock:
            recovered, self._recovered = self._recovered, 0
        if not by_claim:
            return recovered
        db = self._checkout()
        try:
            kept = self._by_claim(db, _EXTEND, (time.time() + self.lease,), by_claim)
            if kept < sum(len(ids) for ids in by_claim.values()):
                self._drop_lost_leases(db, by_claim)
        except sqlite3.Error as exc:
            raise self._fail("heartbeat", exc) from exc
        finally:
            self._checkin(db)
        return recovered

    def _drop_lost_leases(self, db: sqlite3.Connection, by_claim: dict[int, list[int]]) -> None:
        """Forget in-flight rows whose lease expired and went to another consumer (or were purged)."""
        lost: list[int] = []
        for claim, ids in by_claim.items():
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start:start + _CHUNK]
                mine = {row[0] for row in db.execute(_STILL_MINE.format(_marks(len(chunk))), (claim, *chunk))}
                lost.extend(i for i in chunk if i not in mine)
        with self._lock:
            for msg_id in lost:
                self._inflight.pop(msg_id, None)
        if lost:
            log.warning("sqlite %s: lost the lease of %d message(s) before they were acked "
                        "(heartbeats too late?); they may run twice", self.path, len(lost))

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

    def callq_state_store(self) -> StateStore:
        return self._state

    def callq_close(self) -> bool:
        if self._closed:
            return True
        try:
            if self._fork_generation == _fork_generation:
                by_claim = self._inflight_by_claim()
                if by_claim:
                    self._release_on_close(by_claim)
        finally:
            with self._lock:
                self._closed = True
                self._inflight = {}
                idle, self._idle = self._idle, []
            for db in idle:
                db.close()
        return True

    def _release_on_close(self, by_claim: dict[int, list[int]]) -> None:
        try:
            db = self._checkout()
        except BrokerError as exc:
            log.warning("sqlite %s: could not release unacked messages on close (%s); "
                        "they come back when their lease ends", self.path, exc)
            return
        try:
            self._by_claim(db, _RELEASE, (time.time(),), by_claim)
        except sqlite3.Error as exc:
            log.warning("sqlite %s: could not release unacked messages on close (%s); "
                        "they come back when their lease ends", self.path, exc)
        finally:
            self._checkin(db)
        self._signal.notify()
