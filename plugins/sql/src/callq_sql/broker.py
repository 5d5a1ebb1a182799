"""``postgresql://`` / ``mysql://`` / ``mariadb://``: callq queues in one SQL table (SQLAlchemy 2).

Every message is a row of ``<prefix>messages`` with a ``queue`` column. A fetch claims up to
``max_n`` rows of one queue with ``FOR UPDATE SKIP LOCKED`` (concurrent consumers skip each
other's rows instead of waiting), marking them ``status=1`` with this consumer as ``owner`` and
``lease_until`` = now + lease. Heartbeats push the leases of live consumers forward; any
consumer's heartbeat or fetch returns rows whose lease ran out (their consumer died) to
waiting. Ack deletes the row (or marks it done with ``keep_done=true``); requeue makes it
waiting again after ``not_before``. Delays are ``not_before``; priorities a ``priority`` column.
See docs/brokers/sql.md.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection as SAConnection

from callq.broker import BrokerBase, Capabilities, Delivery
from callq.errors import BrokerError
from callq.url import BrokerURL

from .dialects import Statements
from .engine import Runner, check_connect, make_engine, table_prefix
from .schema import Tables, ensure_schema
from .state import SqlState

log = logging.getLogger("callq.sql")

#: rows per INSERT batch / ids per ack statement
CHUNK = 1000
#: first idle wait of a fetch; doubled up to ``poll``
FIRST_WAIT = 0.005
#: how often the offset between this host's clock and the database's is measured again
CLOCK_REFRESH = 60.0


class SqlBroker(BrokerBase):
    """Queues in a SQL table; thread-safe (one SQLAlchemy connection pool per instance)."""

    def __init__(self, url: BrokerURL) -> None:
        super().__init__(url)
        prefix = table_prefix(url)
        self.lease = url.float_param("lease", 15.0, minimum=1.0)
        self.heartbeat_interval = self.lease / 5  # type: ignore[misc]  # per instance, from the URL
        self.poll = url.float_param("poll", 0.2, minimum=0.01)
        self.keep_done = url.bool_param("keep_done", False)
        retry_for = url.float_param("retry", 60.0)
        pool_size = url.int_param("pool_size", 4, minimum=1)
        connect_timeout = url.float_param("connect_timeout", 10.0, minimum=1.0)
        self.engine = make_engine(url, pool_size=pool_size, connect_timeout=connect_timeout)
        self.tables = Tables(prefix)
        self.sql = Statements("postgresql" if self.engine.dialect.name == "postgresql" else "mysql", self.tables)
        self.rc = Runner(url, retry_for)
        self.capabilities = Capabilities(
            acks=True, persistent=True, distributed=True, backlog=True, native_delay=True,
            priority=True, exact_size=True, shared_state=True, redelivery_timeout=self.lease,
        )
        self.consumer_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:10]}"[-100:]
        try:
            check_connect(self.engine, url)
            ensure_schema(self.engine, self.tables, str(url))
            self._measure_clock()
        except BaseException:
            self.engine.dispose()
            raise
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._claim_lock = threading.Lock()
        self._held: set[int] = set()
        self._suspect = False
        self._closed = False
        self._last_recover = 0.0
        self._last_sweep = time.monotonic()
        self._state: SqlState | None = None

    # --- helpers ---------------------------------------------------------------------------

    def _tx(self, what: str, fn: Any, on_error: Any = None) -> Any:
        def run() -> Any:
            with self.engine.begin() as conn:
                return fn(conn)
        return self.rc.call(what, run, on_error)

    def _measure_clock(self) -> None:
        """Offset of the database clock from ours, for delays computed without a round trip."""
        def run(conn: SAConnection) -> float:
            before = time.time()
            db_now = float(conn.exec_driver_sql(self.sql.clock).scalar_one())
            return db_now - (before + time.time()) / 2

        self._clock_offset = float(self._tx("clock", run))
        self._clock_at = time.monotonic()

    def _db_now(self) -> float:
        if time.monotonic() - self._clock_at > CLOCK_REFRESH:
            self._measure_clock()
        return time.time() + self._clock_offset

    def _ids(self, ids: list[int]) -> Any:
        return ids if self.sql.postgres else tuple(ids)

    # --- publish ---------------------------------------------------------------------------

    def callq_publish(self, queue: str, bodies: Sequence[bytes], delay: float, priority: int | None) -> int:
        if not bodies:
            return 0
        not_before = self._db_now() + delay if delay > 0 else 0.0
        prio = int(priority or 0)
        rows = [{"q": queue, "p": prio, "nb": not_before, "b": bytes(b)} for b in bodies]
        stmt = self.sql.publish

        def run(conn: SAConnection) -> None:
            for start in range(0, len(rows), CHUNK):
                conn.exec_driver_sql(stmt, rows[start:start + CHUNK])  # type: ignore[arg-type]

        self._tx(f"publish to {queue}", run)
        with self._cond:
            self._cond.notify_all()  # a fetch of this instance waiting on the queue
        return len(bodies)

    # --- fetch -----------------------------------------------------------------------------

    def callq_fetch(self, queue: str, max_n: int, timeout: float) -> list[Delivery]:
        if max_n <= 0:
            return []
        deadline = time.monotonic() + timeout
        wait = FIRST_WAIT
        while True:
            if time.monotonic() - self._last_recover > self.heartbeat_interval:
                self._recover()
            out = self._claim(queue, max_n)
            if out or self._closed:
                return out
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            with self._cond:
                self._cond.wait(min(remaining, wait))
            wait = min(wait * 2, self.poll)

    def _mark_suspect(self) -> None:
        self._suspect = True  # a claim's commit may have happened without our seeing the rows

    def _claim(self, queue: str, max_n: int) -> list[Delivery]:
        sql = self.sql
        args = {"q": queue, "n": max_n, "me": self.consumer_id, "lease": self.lease}

        def run(conn: SAConnection) -> list[Any]:
            if sql.postgres:
                return conn.exec_driver_sql(sql.claim, args).all()
            rows = conn.exec_driver_sql(sql.claim_select, args).all()
            if rows:
                conn.exec_driver_sql(sql.claim_update, {**args, "ids": tuple(r[0] for r in rows)})
            return [(r[0], r[1], r[2] + 1, r[3]) for r in rows]

        # One claim at a time per instance: between a claim's commit and its rows entering
        # _held, a reconcile (after another claim's lost reply) would give them back.
        with self._claim_lock:
            rows = self._tx(f"fetch from {queue}", run, self._mark_suspect)
            if rows:
                with self._lock:
                    self._held.update(r[0] for r in rows)
            if self._suspect:
                self._reconcile()
        if not rows:
            return []
        rows.sort(key=lambda r: (-r[1], r[0]))
        return [Delivery(bytes(r[3]), queue, r[0], r[2] > 1) for r in rows]

    def _reconcile(self) -> None:
        """Give back rows we own but never handed out (a claim committed but its reply was lost)."""
        self._suspect = False
        owned = self._tx("reconcile", lambda c: [r[0] for r in c.exec_driver_sql(
            self.sql.owned, {"me": self.consumer_id}).all()])
        with self._lock:
            orphans = [i for i in owned if i not in self._held]
        if orphans:
            n = self._tx("reconcile", lambda c: c.exec_driver_sql(
                self.sql.release_ids, {"ids": self._ids(orphans), "me": self.consumer_id}).rowcount)
            log.warning("sql %s: gave back %d message(s) claimed by a fetch whose reply was lost", self.url, n)

    def _recover(self) -> int:
        self._last_recover = time.monotonic()
        n = int(self._tx("recover expired leases", lambda c: c.exec_driver_sql(self.sql.recover).rowcount))
        if n:
            log.warning("sql %s: gave back %d message(s) whose lease expired (dead consumer)", self.url, n)
        return n

    # --- ack / requeue ---------------------------------------------------------------------

    def _settle(self, what: str, stmt: str, deliveries: Sequence[Delivery], extra: dict[str, Any]) -> int:
        ids = [int(d.tag) for d in deliveries]
        n = 0
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start:start + CHUNK]
            args = {"ids": self._ids(chunk), "me": self.consumer_id, **extra}
            n += int(self._tx(what, lambda c, a=args: c.exec_driver_sql(stmt, a).rowcount))
        with self._lock:
            self._held.difference_update(ids)
        return n

    def callq_ack(self, deliveries: Sequence[Delivery]) -> int:
        if not deliveries:
            return 0
        self._settle("ack", self.sql.ack_keep if self.keep_done else self.sql.ack_delete, deliveries, {})
        return len(deliveries)  # rows no longer ours (lease expired) are someone else's now: harmless

    def callq_requeue(self, deliveries: Sequence[Delivery], delay: float) -> int:
        if not deliveries:
            return 0
        n = self._settle("requeue", self.sql.requeue, deliveries, {"delay": max(0.0, float(delay))})
        with self._cond:
            self._cond.notify_all()
        return n

    # --- heartbeat / size / purge / close --------------------------------------------------

    def callq_heartbeat(self) -> int:
        """Extend this consumer's leases; return rows of dead consumers to waiting."""
        with self._lock:
            holding = bool(self._held)
        if holding and not self._closed:
            self._tx("heartbeat", lambda c: c.exec_driver_sql(
                self.sql.extend, {"me": self.consumer_id, "lease": self.lease}))
        recovered = self._recover()
        if self._state is not None and time.monotonic() - self._last_sweep > 60:
            self._last_sweep = time.monotonic()
            self._state.sweep()
        return recovered

    def callq_size(self, queue: str) -> int:
        return int(self._tx("size", lambda c: c.exec_driver_sql(self.sql.size, {"q": queue}).scalar_one()))

    def callq_purge(self, queue: str) -> int:
        return int(self._tx("purge", lambda c: c.exec_driver_sql(self.sql.purge, {"q": queue}).rowcount))

    def callq_state_store(self) -> SqlState:
        if self._state is None:
            self._state = SqlState(self.engine, self.rc, self.sql)
        return self._state

    def callq_close(self) -> bool:
        if self._closed:
            return True
        self._closed = True
        with self._cond:
            self._cond.notify_all()
        try:
            with self._lock:
                holding = bool(self._held)
            if holding or self._suspect:
                self.rc.retry_for = min(self.rc.retry_for, 5.0)
                n = self._tx("close", lambda c: c.exec_driver_sql(self.sql.release, {"me": self.consumer_id}).rowcount)
                if n:
                    log.info("sql %s: gave back %d unacked message(s) on close", self.url, n)
        except BrokerError as exc:
            log.warning("sql %s: could not give back unacked messages on close (%s); "
                        "they come back when their lease (%.0fs) expires", self.url, exc, self.lease)
        finally:
            self.rc.closed = True
            self.engine.dispose()
        return True

    def __repr__(self) -> str:
        return f"SqlBroker({str(self.url)!r}, consumer={self.consumer_id!r})"
