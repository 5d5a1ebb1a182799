"""``sqlite:///path.db``: a persistent queue in one sqlite file, shared by the processes of one machine.

The URL is read in :mod:`.params`; the table layout and SQL are in :mod:`.schema`;
connections, the in-process wake-up signal and fork safety in :mod:`.pool`; the rows this
broker holds leased in :mod:`.leases`; the shared key-value store in :mod:`.state`.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import time
from collections.abc import Sequence

from callq.broker import BrokerBase, Capabilities, Delivery, ResultItem
from callq.errors import BrokerError, ConfigError
from callq.results.sqlite import SqliteResultStore
from callq.state import StateStore
from callq.url import BrokerURL

from . import schema as sql
from .leases import Leases, run_per_claim
from .params import SqliteParams, database_path
from .pool import ConnectionPool, signal_for
from .state import SqliteState

log = logging.getLogger("callq.sqlite")

__all__ = ["SqliteBroker", "database_path"]

# --- the broker ------------------------------------------------------------------------------


class SqliteBroker(BrokerBase):
    """Broker on a sqlite file: acks with leases, delays, priorities, several processes.

    Thread-safe: each operation borrows a sqlite connection from a small pool, so fetch,
    ack, publish and heartbeat may run in different threads at once.
    """

    def __init__(self, url: BrokerURL) -> None:
        super().__init__(url)
        params = SqliteParams.from_url(url)
        self.path = params.path
        self.lease = params.lease
        self.heartbeat_interval = params.heartbeat  # type: ignore[misc]  # per instance: follows lease
        self.poll = params.poll
        self.busy_timeout = params.busy_timeout
        self.synchronous = params.synchronous
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
        self._signal = signal_for(self.path)
        self._leases = Leases(self.path)  # rows fetched and not yet acked, requeued or released
        self._backlog: set[str] = set()  # queues whose last fetch came back full
        directory = os.path.dirname(self.path)
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"broker URL {url}: cannot create directory {directory}: {exc}") from None
        self._pool = ConnectionPool(self.path, self.busy_timeout, self.synchronous, self._after_fork)
        # borrow and return a connection (also used by SqliteState); bound once, for speed
        self._checkout = self._pool.checkout
        self._checkin = self._pool.checkin
        db = self._checkout()
        try:
            sql.create_schema(db, self.path)
        except sqlite3.Error as exc:
            raise BrokerError(f"sqlite: cannot create the schema in {self.path}: {exc}") from exc
        finally:
            self._checkin(db)
        self._state = SqliteState(self)
        self._results: SqliteResultStore | None = None  # its own file's store, once results go with acks

    def __repr__(self) -> str:
        return f"SqliteBroker({self.path!r})"

    # --- connections ------------------------------------------------------------------------

    def _after_fork(self) -> None:
        # In a forked child: the parent's leases and wake-up signal are not ours.
        self._leases.reset()
        self._signal = signal_for(self.path)

    def _fail(self, operation: str, exc: sqlite3.Error) -> BrokerError:
        return BrokerError(f"sqlite {operation} on {self.path} failed: {exc}")

    # --- broker hooks ----------------------------------------------------------------------

    def callq_publish(self, queue: str, bodies: Sequence[bytes], delay: float, priority: int | None) -> int:
        if not bodies:
            return 0
        at = time.time() + max(delay, 0.0)
        prio = priority or 0
        db = self._checkout()
        try:
            if len(bodies) == 1:
                db.execute(sql.INSERT, (queue, prio, at, bodies[0]))
            else:
                db.execute("BEGIN IMMEDIATE")
                db.executemany(sql.INSERT, [(queue, prio, at, body) for body in bodies])
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
                        due = db.execute(sql.NEXT_DUE, (queue,)).fetchone()[0]
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
        prio = db.execute(sql.TOP_PRIORITY, (queue,)).fetchone()[0]
        while prio is not None:
            rows += db.execute(sql.SELECT_READY, (queue, prio, now, max_n - len(rows))).fetchall()
            if len(rows) >= max_n:
                break
            prio = db.execute(sql.NEXT_PRIORITY, (queue, prio)).fetchone()[0]
        if not rows:
            db.execute("COMMIT")
            self._backlog.discard(queue)
            return []
        claim = sql.new_claim()
        ids = [row[0] for row in rows]
        until = now + self.lease
        for start in range(0, len(ids), sql.CHUNK):
            chunk = ids[start:start + sql.CHUNK]
            db.execute(sql.CLAIM.format(sql.marks(len(chunk))), (claim, until, *chunk))
        db.execute("COMMIT")
        if len(rows) == max_n:
            self._backlog.add(queue)
        else:
            self._backlog.discard(queue)
        recovered = sum(1 for row in rows if row[3] is not None)
        self._leases.add(ids, claim, recovered)
        if recovered:
            log.info("sqlite %s: recovered %d message(s) of queue %r from expired leases",
                     self.path, recovered, queue)
        # The tag is (row id, claim): a row id can be reused after a delete, the pair cannot.
        # A row seen before was requeued, released, or leased by a consumer that died.
        return [Delivery(body if type(body) is bytes else _as_bytes(body), queue, (msg_id, claim),
                         bool(again) or old_claim is not None)
                for msg_id, body, again, old_claim in rows]

    def results_with_acks(self, store_url: str) -> bool:
        """The result store in this broker's own file (the default) gets a chunk's records in the
        transaction of its acks: one write transaction, not two."""
        if store_url != self.url.raw:
            return False
        from ...results.store import open_store

        store = open_store(store_url)
        if not isinstance(store, SqliteResultStore):
            return False
        self._results = store
        return True

    def callq_ack(self, deliveries: Sequence[Delivery], results: Sequence[ResultItem]) -> int:
        by_claim = self._leases.forget(deliveries)
        if not by_claim and not results:
            return 0
        store = self._results
        if results and store is None:
            raise BrokerError(f"sqlite {self.path}: results sent with acks before results_with_acks() was asked")
        db = self._checkout()
        try:
            if not results:
                return run_per_claim(db, sql.ACK, (), by_claim)
            changed = run_per_claim(db, sql.ACK, (), by_claim, also=lambda tx: store.write_rows(tx, results))
        except sqlite3.Error as exc:
            raise self._fail("ack", exc) from exc
        finally:
            self._checkin(db)
        store.written()
        return changed

    def callq_requeue(self, deliveries: Sequence[Delivery], delay: float) -> int:
        by_claim = self._leases.forget(deliveries)
        if not by_claim:
            return 0
        db = self._checkout()
        try:
            changed = run_per_claim(db, sql.RELEASE, (time.time() + max(delay, 0.0),), by_claim)
        except sqlite3.Error as exc:
            raise self._fail("requeue", exc) from exc
        finally:
            self._checkin(db)
        self._signal.notify()
        return changed

    def callq_heartbeat(self) -> int:
        leases = self._leases
        by_claim = leases.grouped()
        recovered = leases.take_recovered()
        if not by_claim:
            return recovered
        db = self._checkout()
        try:
            leases.extend(db, by_claim, time.time() + self.lease)
        except sqlite3.Error as exc:
            raise self._fail("heartbeat", exc) from exc
        finally:
            self._checkin(db)
        return recovered

    def callq_purge(self, queue: str) -> int:
        db = self._checkout()
        try:
            return db.execute(sql.PURGE, (queue, time.time())).rowcount
        except sqlite3.Error as exc:
            raise self._fail("purge", exc) from exc
        finally:
            self._checkin(db)

    def callq_size(self, queue: str) -> int:
        db = self._checkout()
        try:
            return int(db.execute(sql.SIZE, (queue, time.time())).fetchone()[0])
        except sqlite3.Error as exc:
            raise self._fail("size", exc) from exc
        finally:
            self._checkin(db)

    def callq_state_store(self) -> StateStore:
        return self._state

    def callq_close(self) -> bool:
        if self._pool.closed:
            return True
        try:
            # a forked child has no leases of its own yet
            if not self._pool.forked and self._leases.release_all(self._pool):
                self._signal.notify()
        finally:
            self._leases.clear()
            self._pool.close()
        return True


def _as_bytes(body: object) -> bytes:
    """A row written by other code (TEXT, a number, NULL): its content as bytes, for core to judge."""
    if body is None:
        return b""
    if isinstance(body, str):
        return body.encode("utf-8", "surrogatepass")
    if isinstance(body, (bytearray, memoryview)):
        return bytes(body)
    return str(body).encode()
