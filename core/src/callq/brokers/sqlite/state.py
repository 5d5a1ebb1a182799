"""The sqlite broker's shared key-value store (:class:`callq.state.StateStore`).

One table in the broker's own file. ``expires_at`` is a UNIX time (every process of the
machine shares the clock); an expired row counts as absent everywhere and is deleted now
and then. Each statement is a single atomic write, except ``incr``, which reads and writes
inside one ``BEGIN IMMEDIATE`` transaction (the file's write lock).
"""

from __future__ import annotations

import sqlite3
import time
from typing import TYPE_CHECKING

from callq.errors import BrokerError

if TYPE_CHECKING:
    from .broker import SqliteBroker

STATE_TABLE = "callq_state"

STATE_SCHEMA = (
    # WITHOUT ROWID: the key is the table's own b-tree (one seek per operation, no rowid index).
    f"""CREATE TABLE IF NOT EXISTS {STATE_TABLE} (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        expires_at REAL                   -- UNIX time; NULL: kept until deleted
    ) WITHOUT ROWID""",
    # Serves the periodic cleanup; keys without a ttl are not in it.
    f"CREATE INDEX IF NOT EXISTS {STATE_TABLE}_expiry ON {STATE_TABLE} (expires_at) "
    "WHERE expires_at IS NOT NULL",
)

_LIVE = "(expires_at IS NULL OR expires_at > ?)"
_PUT = (f"INSERT INTO {STATE_TABLE} (key, value, expires_at) VALUES (?, ?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at")
# Only when the present row is expired: rowcount 0 means another value is live.
_PUT_NEW = _PUT + f" WHERE {STATE_TABLE}.expires_at IS NOT NULL AND {STATE_TABLE}.expires_at <= ?"
_GET = f"SELECT value, expires_at FROM {STATE_TABLE} WHERE key = ?"
_DELETE_LIVE = f"DELETE FROM {STATE_TABLE} WHERE key = ? AND {_LIVE}"
_DELETE_EXPIRED_KEY = f"DELETE FROM {STATE_TABLE} WHERE key = ? AND expires_at <= ?"
_SCAN_RANGE = f"SELECT key, value FROM {STATE_TABLE} WHERE key >= ? AND key < ? AND {_LIVE}"
_SCAN_FROM = f"SELECT key, value FROM {STATE_TABLE} WHERE key >= ? AND {_LIVE}"
_CLEANUP = f"DELETE FROM {STATE_TABLE} WHERE expires_at <= ?"

#: seconds between two deletions of expired rows by one process
CLEANUP_INTERVAL = 60.0

_MAX_CODE_POINT = 0x10FFFF


def prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix`` (None: no bound).

    sqlite compares TEXT bytewise (BINARY collation) and UTF-8 byte order is code point order,
    so incrementing the last code point gives the bound; surrogates are skipped, and a last
    character that cannot grow is dropped.
    """
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < _MAX_CODE_POINT:
            nxt = last + 1
            if 0xD800 <= nxt <= 0xDFFF:
                nxt = 0xE000
            return "".join(chars) + chr(nxt)
    return None


class SqliteState:
    """A :class:`callq.state.StateStore` in the broker's file, on the broker's connection pool."""

    def __init__(self, broker: SqliteBroker) -> None:
        self._broker = broker
        self._next_cleanup = time.monotonic() + CLEANUP_INTERVAL

    def __repr__(self) -> str:
        return f"SqliteState({self._broker.path!r})"

    def _fail(self, operation: str, exc: sqlite3.Error) -> BrokerError:
        return BrokerError(f"sqlite state {operation} on {self._broker.path} failed: {exc}")

    def put(self, key: str, value: str, ttl: float | None = None, only_new: bool = False) -> bool:
        now = time.time()
        expires_at = now + ttl if ttl is not None else None
        broker = self._broker
        db = broker._checkout()
        try:
            if only_new:
                stored = db.execute(_PUT_NEW, (key, value, expires_at, now)).rowcount > 0
            else:
                db.execute(_PUT, (key, value, expires_at))
                stored = True
            if time.monotonic() >= self._next_cleanup:
                self._cleanup(db, now)
            return stored
        except sqlite3.Error as exc:
            raise self._fail("put", exc) from exc
        finally:
            broker._checkin(db)

    def _cleanup(self, db: sqlite3.Connection, now: float) -> None:
        self._next_cleanup = time.monotonic() + CLEANUP_INTERVAL
        db.execute(_CLEANUP, (now,))

    def get(self, key: str) -> str | None:
        broker = self._broker
        db = broker._checkout()
        try:
            row = db.execute(_GET, (key,)).fetchone()
        except sqlite3.Error as exc:
            raise self._fail("get", exc) from exc
        finally:
            broker._checkin(db)
        if row is None or (row[1] is not None and row[1] <= time.time()):
            return None
        return str(row[0])

    def delete(self, key: str) -> bool:
        broker = self._broker
        db = broker._checkout()
        try:
            now = time.time()
            existed = db.execute(_DELETE_LIVE, (key, now)).rowcount > 0
            if not existed:  # an expired row may remain: remove it, it was absent anyway
                db.execute(_DELETE_EXPIRED_KEY, (key, now))
            return existed
        except sqlite3.Error as exc:
            raise self._fail("delete", exc) from exc
        finally:
            broker._checkin(db)

    def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        broker = self._broker
        db = broker._checkout()
        try:
            db.execute("BEGIN IMMEDIATE")  # the write lock: no other process reads-then-writes meanwhile
            now = time.time()
            row = db.execute(_GET, (key,)).fetchone()
            if row is None or (row[1] is not None and row[1] <= now):
                result, expires_at = amount, (now + ttl if ttl is not None else None)
            else:
                try:
                    result, expires_at = int(row[0]) + amount, row[1]
                except ValueError:
                    raise ValueError(f"sqlite state incr: key {key!r} holds {row[0]!r}, "
                                     "not an integer") from None
            db.execute(_PUT, (key, str(result), expires_at))
            db.execute("COMMIT")
            return result
        except sqlite3.Error as exc:
            raise self._fail("incr", exc) from exc
        finally:
            broker._checkin(db)  # rolls back if still in the transaction

    def scan(self, prefix: str) -> dict[str, str]:
        end = prefix_end(prefix)
        broker = self._broker
        db = broker._checkout()
        try:
            now = time.time()
            if end is None:
                rows = db.execute(_SCAN_FROM, (prefix, now)).fetchall()
            else:
                rows = db.execute(_SCAN_RANGE, (prefix, end, now)).fetchall()
        except sqlite3.Error as exc:
            raise self._fail("scan", exc) from exc
        finally:
            broker._checkin(db)
        return {str(k): str(v) for k, v in rows}
