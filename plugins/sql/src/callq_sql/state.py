"""The shared key-value store (``callq.state.StateStore``) in the ``<prefix>state`` table.

Expiry is a column compared with the database clock on every read, so an expired key is
absent at once; expired rows are swept by heartbeats. ``put(only_new=True)`` removes an
expired row and inserts with ``ON CONFLICT DO NOTHING`` / ``INSERT IGNORE`` in one
transaction: of several racers exactly one wins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine

if TYPE_CHECKING:
    from .dialects import Statements
    from .engine import Runner

MAX_KEY = 512


def _like(prefix: str) -> str:
    return prefix.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"


class SqlState:
    def __init__(self, engine: Engine, runner: Runner, sql: Statements) -> None:
        self.engine = engine
        self.rc = runner
        self.sql = sql

    def _tx(self, what: str, fn: Any) -> Any:
        def run() -> Any:
            with self.engine.begin() as conn:
                return fn(conn)
        return self.rc.call(what, run)

    @staticmethod
    def _check(key: str) -> None:
        if len(key) > MAX_KEY:
            raise ValueError(f"state key longer than {MAX_KEY} characters: {key[:40]}...")

    def put(self, key: str, value: str, ttl: float | None = None, only_new: bool = False) -> bool:
        self._check(key)
        args = {"k": key, "v": value, "ttl": ttl}
        sql = self.sql

        def run(conn: Connection) -> bool:
            if not only_new:
                conn.exec_driver_sql(sql.st_upsert, args)
                return True
            conn.exec_driver_sql(sql.st_drop_expired_key, args)
            return conn.exec_driver_sql(sql.st_insert_new, args).rowcount == 1

        return bool(self._tx("state put", run))

    def get(self, key: str) -> str | None:
        row = self._tx("state get", lambda c: c.exec_driver_sql(self.sql.st_get, {"k": key}).first())
        return None if row is None else str(row[0])

    def delete(self, key: str) -> bool:
        def run(conn: Connection) -> bool:
            live = conn.exec_driver_sql(self.sql.st_delete_live, {"k": key}).rowcount
            conn.exec_driver_sql(self.sql.st_delete, {"k": key})
            return live > 0

        return bool(self._tx("state delete", run))

    def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        self._check(key)
        args = {"k": key, "v": str(int(amount)), "n": int(amount), "ttl": ttl}
        sql = self.sql

        def run(conn: Connection) -> int:
            conn.exec_driver_sql(sql.st_drop_expired_key, args)
            if sql.postgres:
                return int(conn.exec_driver_sql(sql.st_incr, args).scalar_one())
            conn.exec_driver_sql(sql.st_incr, args)
            return int(conn.exec_driver_sql(sql.st_incr_read, args).scalar_one())

        return int(self._tx("state incr", run))

    def scan(self, prefix: str) -> dict[str, str]:
        rows = self._tx("state scan", lambda c: c.exec_driver_sql(self.sql.st_scan, {"pat": _like(prefix)}).all())
        return {str(k): str(v) for k, v in rows}

    def sweep(self) -> int:
        """Delete expired rows (called from heartbeats)."""
        return int(self._tx("state sweep", lambda c: c.exec_driver_sql(self.sql.st_sweep).rowcount))
