"""``sqlite:///relative.db`` / ``sqlite:////abs/path.db``: results in a table ``callq_results``
of a sqlite file, with the standard library only (the default store of the sqlite broker,
in the broker's own file).

Writes are batched (one transaction per batch). Waiting wakes at once for results written by
this process and looks again every 10-250 ms for those written by other processes. Expired
rows are deleted as new ones are written.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Sequence

import orjson

from ..errors import ConfigError
from ..url import BrokerURL
from .store import PollingWait, Record

#: the sqlite broker's own URL parameters, accepted (and ignored) so its URL names its file
BROKER_PARAMS = ("lease", "heartbeat", "poll", "busy_timeout", "synchronous")
SWEEP_EVERY = 30.0
_SCHEMA = """
CREATE TABLE IF NOT EXISTS callq_results (
    id VARCHAR(64) PRIMARY KEY, status VARCHAR(16) NOT NULL, record TEXT NOT NULL, expires_at FLOAT NOT NULL);
CREATE INDEX IF NOT EXISTS ix_callq_results_expires_at ON callq_results (expires_at);
"""


def sqlite_path(url: str) -> str:
    parsed = BrokerURL.parse(url)
    parsed.check_params(BROKER_PARAMS)
    if parsed.host or parsed.port:
        raise ConfigError(f"result store URL {parsed}: a sqlite URL has no host; use sqlite:///relative.db "
                          "or sqlite:////absolute/path.db")
    path = parsed.path[1:] if parsed.path.startswith("/") else parsed.path
    if not path or path == ":memory:" or path.endswith("/"):
        raise ConfigError(f"result store URL {parsed}: name a database file, e.g. sqlite:///results.db")
    return os.path.abspath(path)


class SqliteResultStore(PollingWait):
    def __init__(self, url: str) -> None:
        self.url = url
        self.path = sqlite_path(url)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._local = threading.local()
        self._swept = time.time()
        self._init_wait()
        self._conn().executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", 0) != os.getpid():
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def put_many(self, items: Sequence[tuple[str, Record, float]]) -> None:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            self.write_rows(conn, items)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.written()

    def write_rows(self, conn: sqlite3.Connection, items: Sequence[tuple[str, Record, float]]) -> None:
        """Write ``items`` inside the caller's transaction on ``conn`` (a connection to this file:
        the sqlite broker stores the records of a chunk with its acks); then :meth:`written`."""
        now = time.time()
        conn.executemany("INSERT OR REPLACE INTO callq_results (id, status, record, expires_at) VALUES (?, ?, ?, ?)",
                         [(call_id, str(record.get("status", "")), orjson.dumps(record).decode(), now + ttl)
                          for call_id, record, ttl in items])
        if now - self._swept > SWEEP_EVERY:
            self._swept = now
            conn.execute("DELETE FROM callq_results WHERE expires_at < ?", (now,))

    def written(self) -> None:
        """Records were committed: wake this process's waiters."""
        self._notify()

    def get(self, call_id: str) -> Record | None:
        row = self._conn().execute("SELECT record FROM callq_results WHERE id = ? AND expires_at > ?",
                                   (call_id, time.time())).fetchone()
        return json.loads(row[0]) if row else None

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
