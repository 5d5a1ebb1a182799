"""The sqlite broker's message table, its SQL statements and the layout check.

One table holds every queue. A row is *waiting* (``claim`` NULL) or *leased* (``claim`` set
to the random number of the fetch that took it). ``available_at`` is when a waiting row
may be delivered, and for a leased row when its lease ends; so one condition,
``available_at <= now``, finds both ready rows and rows whose consumer died (stopped
heartbeating), and one index serves fetch, size and purge.
"""

from __future__ import annotations

import os
import sqlite3

from callq.errors import ConfigError

from .state import STATE_SCHEMA

TABLE = "callq_messages"

SCHEMA = (
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
#: usable by older and newer callq at once; see docs/brokers/sqlite.md.
SCHEMA_VERSION = 1

INSERT = f"INSERT INTO {TABLE} (queue, priority, available_at, body) VALUES (?, ?, ?, ?)"
# Every statement below seeks the index; none scans a queue's rows (a queue may hold a
# large backlog of delayed messages). Priorities are walked one by one, highest first.
TOP_PRIORITY = f"SELECT max(priority) FROM {TABLE} WHERE queue = ?"
NEXT_PRIORITY = f"SELECT max(priority) FROM {TABLE} WHERE queue = ? AND priority < ?"
SELECT_READY = (
    f"SELECT id, body, redelivered, claim FROM {TABLE} "
    "WHERE queue = ? AND priority = ? AND available_at <= ? ORDER BY available_at LIMIT ?"
)
# When the next row of a queue becomes available (NULL: the queue is empty).
NEXT_DUE = f"""WITH RECURSIVE levels(prio) AS (
    SELECT max(priority) FROM {TABLE} WHERE queue = ?1
    UNION ALL
    SELECT (SELECT max(priority) FROM {TABLE} WHERE queue = ?1 AND priority < levels.prio)
    FROM levels WHERE levels.prio IS NOT NULL
)
SELECT min((SELECT min(available_at) FROM {TABLE} WHERE queue = ?1 AND priority = levels.prio))
FROM levels WHERE levels.prio IS NOT NULL"""
_WAITING = "queue = ? AND (claim IS NULL OR available_at <= ?)"
# ``{}`` below takes ``marks(n)``: the placeholders of n ids.
CLAIM = f"UPDATE {TABLE} SET claim = ?, available_at = ? WHERE id IN ({{}})"
ACK = f"DELETE FROM {TABLE} WHERE claim = ? AND id IN ({{}})"
RELEASE = f"UPDATE {TABLE} SET claim = NULL, available_at = ?, redelivered = 1 WHERE claim = ? AND id IN ({{}})"
EXTEND = f"UPDATE {TABLE} SET available_at = ? WHERE claim = ? AND id IN ({{}})"
STILL_MINE = f"SELECT id FROM {TABLE} WHERE claim = ? AND id IN ({{}})"
SIZE = f"SELECT count(*) FROM {TABLE} WHERE {_WAITING}"
PURGE = f"DELETE FROM {TABLE} WHERE {_WAITING}"

#: ids per ``IN (...)`` list; below every sqlite build's variable limit (999 before 3.32)
CHUNK = 500


def marks(n: int) -> str:
    return ",".join("?" * n)


def new_claim() -> int:
    """A random number in [1, 2**31), from os.urandom so forks do not repeat it.

    It only has to differ from the other claims *of the same row id* (every statement
    matches claim and id together), so 31 bits suffice; a 4-byte integer keeps the
    row and index entry small when a claim stamps them.
    """
    return int.from_bytes(os.urandom(4), "big") >> 1 or 1


def create_schema(db: sqlite3.Connection, path: str) -> None:
    """Create the tables (messages and state) unless present; refuse a file of another layout.

    Raises :class:`sqlite3.Error` for the caller to wrap.
    """
    db.execute("BEGIN IMMEDIATE")
    version = db.execute("PRAGMA user_version").fetchone()[0]
    has_table = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)).fetchone()
    if has_table and version != SCHEMA_VERSION:
        raise ConfigError(
            f"sqlite file {path} holds callq queues of layout {version}; this "
            f"callq uses layout {SCHEMA_VERSION}: drain it with the callq version "
            "that wrote it, or use another file")
    for statement in (*SCHEMA, *STATE_SCHEMA):
        db.execute(statement)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    db.execute("COMMIT")
