"""The call history table ``callq_calls`` (SQLAlchemy 2): one row per call outcome.

Written in batches by :class:`callq.history.plugin.HistoryPlugin`; read by ``callq status``
and the dashboard (search, detail, per-second/minute/hour/day counts).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ..sqlengine import engine_for

#: outcomes counted as failed in charts and rates
FAILED = ("retry", "dead", "malformed")

_meta = sa.MetaData()
calls = sa.Table(
    "callq_calls", _meta,
    sa.Column("row", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("call_id", sa.String(64)),
    sa.Column("queue", sa.String(200), nullable=False),
    sa.Column("function", sa.String(300), nullable=False),
    sa.Column("args", sa.Text),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("result", sa.Text),
    sa.Column("error_type", sa.String(200)),
    sa.Column("error", sa.Text),
    sa.Column("traceback", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Column("attempt", sa.Integer, nullable=False, default=0),
    sa.Column("host", sa.String(200)),
    sa.Column("pid", sa.Integer),
    sa.Column("published_at", sa.Double),
    sa.Column("started_at", sa.Double),
    sa.Column("finished_at", sa.Double, nullable=False),
    sa.Column("parent", sa.String(64)),
    sa.Index("callq_calls_finished", "finished_at"),
    sa.Index("callq_calls_queue", "queue", "finished_at"),
    sa.Index("callq_calls_outcome", "outcome", "finished_at"),
    sa.Index("callq_calls_id", "call_id"),
)

COLUMNS = [c.name for c in calls.columns]
INSERT_COLUMNS = tuple(c for c in COLUMNS if c != "row")
_MARKS = {"qmark": "?", "format": "%s", "pyformat": "%s"}
_create_lock = threading.Lock()


@dataclass
class Page:
    rows: list[dict[str, Any]]
    total: int
    offset: int
    limit: int


class HistoryStore:
    """Read and write the history table at ``url`` (created on first use)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = engine_for(url)
        mark = _MARKS.get(self.engine.dialect.paramstyle)
        self._insert_sql = (f"INSERT INTO callq_calls ({', '.join(INSERT_COLUMNS)}) "
                            f"VALUES ({', '.join([mark] * len(INSERT_COLUMNS))})") if mark else None
        with _create_lock:
            try:
                _meta.create_all(self.engine, checkfirst=True)
            except sa.exc.DatabaseError:  # another process created it at the same moment
                _meta.create_all(self.engine, checkfirst=True)

    def insert_many(self, rows: Sequence[tuple[Any, ...] | dict[str, Any]]) -> None:
        """Insert rows: tuples in :data:`INSERT_COLUMNS` order (fast path) or dicts by column."""
        if not rows:
            return
        tuples = [r if isinstance(r, tuple) else tuple(r.get(c) for c in INSERT_COLUMNS) for r in rows]
        with self.engine.begin() as conn:
            if self._insert_sql is not None:  # straight to the driver's executemany
                conn.exec_driver_sql(self._insert_sql, tuples)
            else:
                conn.execute(sa.insert(calls), [dict(zip(INSERT_COLUMNS, t)) for t in tuples])

    def prune(self, max_age: float | None, max_rows: int | None) -> int:
        """Delete rows older than ``max_age`` seconds and all but the newest ``max_rows``."""
        deleted = 0
        with self.engine.begin() as conn:
            if max_age is not None:
                deleted += conn.execute(sa.delete(calls).where(calls.c.finished_at < time.time() - max_age)).rowcount
            if max_rows is not None:
                top = conn.execute(sa.select(sa.func.max(calls.c.row))).scalar()
                if top is not None and top > max_rows:
                    deleted += conn.execute(sa.delete(calls).where(calls.c.row <= top - max_rows)).rowcount
        return deleted

    def _where(self, queue: str | None, outcome: str | None, since: float | None, until: float | None,
               text: str | None, call_id: str | None = None) -> list[Any]:
        where: list[Any] = []
        if queue:
            where.append(calls.c.queue == queue)
        if outcome == "failed":
            where.append(calls.c.outcome.in_(FAILED))
        elif outcome:
            where.append(calls.c.outcome == outcome)
        if since is not None:
            where.append(calls.c.finished_at >= since)
        if until is not None:
            where.append(calls.c.finished_at < until)
        if call_id:
            where.append(calls.c.call_id == call_id)
        if text:
            where.append(sa.or_(calls.c.args.contains(text, autoescape=True),
                                calls.c.error.contains(text, autoescape=True),
                                calls.c.error_type.contains(text, autoescape=True),
                                calls.c.function.contains(text, autoescape=True)))
        return where

    def search(self, *, queue: str | None = None, outcome: str | None = None, since: float | None = None,
               until: float | None = None, text: str | None = None, limit: int = 50, offset: int = 0) -> Page:
        """Newest first. ``outcome="failed"`` matches retry, dead and malformed."""
        where = self._where(queue, outcome, since, until, text)
        limit = max(1, min(int(limit), 1000))
        offset = max(0, int(offset))
        with self.engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(calls).where(*where)).scalar() or 0
            result = conn.execute(sa.select(calls).where(*where).order_by(calls.c.row.desc())
                                  .limit(limit).offset(offset))
            rows = [_row(r) for r in result.mappings()]
        return Page(rows, int(total), offset, limit)

    def attempts(self, call_id: str) -> list[dict[str, Any]]:
        """Every recorded outcome of one call, oldest first."""
        with self.engine.connect() as conn:
            result = conn.execute(sa.select(calls).where(calls.c.call_id == call_id).order_by(calls.c.attempt, calls.c.finished_at, calls.c.row))
            return [_row(r) for r in result.mappings()]

    def counts(self, bucket: float, buckets: int, *, queue: str | None = None,
               now: float | None = None) -> list[tuple[float, int, int]]:
        """``(bucket start, finished, failed)`` for the last ``buckets`` buckets of ``bucket`` seconds."""
        now = time.time() if now is None else now
        end = (now // bucket + 1) * bucket
        start = end - bucket * buckets
        slot = sa.cast(sa.func.floor((calls.c.finished_at - start) / bucket), sa.Integer).label("slot")
        failed = sa.func.sum(sa.case((calls.c.outcome.in_(FAILED), 1), else_=0))
        where = self._where(queue, None, start, end, None)
        with self.engine.connect() as conn:
            result = conn.execute(sa.select(slot, sa.func.count(), failed).where(*where).group_by(slot))
            found = {int(s): (int(n), int(f or 0)) for s, n, f in result}
        return [(start + i * bucket, *found.get(i, (0, 0))) for i in range(buckets)]

    def queue_stats(self, window: float = 60.0) -> dict[str, dict[str, float]]:
        """Per queue over the last ``window`` seconds: finished and failed per second."""
        since = time.time() - window
        failed = sa.func.sum(sa.case((calls.c.outcome.in_(FAILED), 1), else_=0))
        with self.engine.connect() as conn:
            result = conn.execute(sa.select(calls.c.queue, sa.func.count(), failed)
                                  .where(calls.c.finished_at >= since).group_by(calls.c.queue))
            return {q: {"finished": n / window, "failed": (f or 0) / window} for q, n, f in result}

    def queues(self) -> list[str]:
        with self.engine.connect() as conn:
            return sorted(r[0] for r in conn.execute(sa.select(calls.c.queue).distinct()))

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(calls)).scalar() or 0)


def _row(mapping: Any) -> dict[str, Any]:
    row = dict(mapping)
    for key in ("args", "result"):
        if row.get(key) is not None:
            try:
                row[key] = json.loads(row[key])
            except ValueError:
                pass
    return row
