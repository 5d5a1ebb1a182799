"""``sqlite:///file.db``, ``postgresql://...``, ``mysql://``/``mariadb://``: results in a SQL
table ``callq_results`` (SQLAlchemy 2; ``pip install 'callq[sql]'``).

Waiting wakes at once for results written by this process and looks again every 10-250 ms
for results written by others (SQL has no portable blocking read). Expired rows are deleted
as new ones are written.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from ..sqlengine import engine_for
from .store import PollingWait, Record

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
        self._notify()

    def get(self, call_id: str) -> Record | None:
        import sqlalchemy as sa

        t = self.table
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t.c.record).where(t.c.id == call_id, t.c.expires_at > time.time())).first()
        return json.loads(row[0]) if row else None

    def close(self) -> None:
        pass
