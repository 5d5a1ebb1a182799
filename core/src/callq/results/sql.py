"""``sqlite:///file.db``, ``postgresql://...``, ``mysql://``/``mariadb://``: results in a SQL
table ``callq_results`` (SQLAlchemy 2; ``pip install 'callq[sql]'``).

Waiting wakes at once for results written by this process. On PostgreSQL a writer sends
``NOTIFY callq_results`` with the ids of final results and waiters LISTEN (one connection per
process and store), so they wake at once for other processes' results too; on sqlite and
MariaDB they look again every 10-250 ms. Expired rows are deleted as new ones are written.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from ..sqlengine import engine_for
from .store import FINAL, PollingWait, Record

log = logging.getLogger("callq.results")
CHANNEL = "callq_results"

SWEEP_EVERY = 30.0


class SQLResultStore(PollingWait):
    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        self.url = url
        self.engine = engine_for(url)
        meta = sa.MetaData()
        self.table = sa.Table(
            "callq_results", meta,
            sa.Column("id", sa.String(64), primary_key=True),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("record", sa.Text, nullable=False),
            sa.Column("expires_at", sa.Double, nullable=False, index=True),
        )
        try:
            meta.create_all(self.engine, checkfirst=True)
        except sa.exc.DatabaseError:  # another process created it at the same moment
            meta.create_all(self.engine, checkfirst=True)
        self._swept = time.time()
        self._init_wait()
        self.postgres = self.engine.dialect.name == "postgresql"
        self._listener: threading.Thread | None = None
        self._listen_lock = threading.Lock()
        self._closed = False

    def put_many(self, items: Sequence[tuple[str, Record, float]]) -> None:
        import sqlalchemy as sa

        now = time.time()
        rows: dict[str, dict[str, Any]] = {}
        for call_id, record, ttl in items:
            rows[call_id] = {"id": call_id, "status": record.get("status", ""),
                             "record": json.dumps(record), "expires_at": now + ttl}
        t = self.table
        with self.engine.begin() as conn:
            conn.execute(sa.delete(t).where(t.c.id.in_(list(rows))))
            conn.execute(sa.insert(t), list(rows.values()))
            if now - self._swept > SWEEP_EVERY:
                self._swept = now
                conn.execute(sa.delete(t).where(t.c.expires_at < now))
            final = [i for i, record, _ in items if record.get("status") in FINAL]
            if self.postgres and final:
                conn.execute(sa.text("SELECT pg_notify(:channel, :ids)"),
                             {"channel": CHANNEL, "ids": ",".join(final)[:7000]})
        self._notify()

    def wait(self, call_id: str, timeout: float | None) -> Record | None:
        if self.postgres and self._listener is None:
            self._listen()
        return super().wait(call_id, timeout)

    def _listen(self) -> None:
        """One thread per store LISTENs and wakes this process's waiters on every NOTIFY."""
        with self._listen_lock:
            if self._listener is not None:
                return
            dsn = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            self._listener = threading.Thread(target=self._listen_loop, args=(dsn,), name="callq-results-listen",
                                              daemon=True)
            self._listener.start()

    def _listen_loop(self, dsn: str) -> None:
        import psycopg

        while not self._closed:
            try:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.max_pause = 2.0  # told of every final write: look again only as a safety net
                    self._notify()  # anything written before LISTEN: look again now
                    while not self._closed:
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self._notify()
            except Exception as exc:  # noqa: BLE001 - waiters fall back to polling meanwhile
                self.max_pause = PollingWait.max_pause
                if self._closed:
                    return
                log.warning("LISTEN %s failed (%s: %s); waiting by polling, retrying in 5 s", CHANNEL,
                            type(exc).__name__, exc)
                time.sleep(5)

    def get(self, call_id: str) -> Record | None:
        import sqlalchemy as sa

        t = self.table
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t.c.record).where(t.c.id == call_id, t.c.expires_at > time.time())).first()
        return json.loads(row[0]) if row else None

    def close(self) -> None:
        self._closed = True
