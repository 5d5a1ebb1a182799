"""The leases one sqlite broker holds, and the SQL that acts on leased rows claim by claim.

A fetch leases its rows under one random claim (see :mod:`.schema`). :class:`Leases`
remembers row id -> claim until the rows are acked, requeued or released on close, so the
heartbeat can extend their leases and notice the ones lost to another consumer.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from callq.broker import Delivery
from callq.errors import BrokerError

from . import schema as sql
from .pool import ConnectionPool

log = logging.getLogger("callq.sqlite")


def run_per_claim(db: sqlite3.Connection, statement: str, head: tuple[Any, ...], by_claim: dict[int, list[int]],
                  also: Callable[[sqlite3.Connection], None] | None = None) -> int:
    """Run ``statement`` (``... claim = ? AND id IN ({})``) per claim, in chunks of ids, in one
    transaction; ``head`` are the parameters before the claim; ``also(db)`` runs in the same
    transaction. Return the rows changed."""
    statements = [
        (claim, ids[start:start + sql.CHUNK])
        for claim, ids in by_claim.items() for start in range(0, len(ids), sql.CHUNK)
    ]
    if len(statements) == 1 and also is None:
        claim, ids = statements[0]
        return db.execute(statement.format(sql.marks(len(ids))), (*head, claim, *ids)).rowcount
    changed = 0
    db.execute("BEGIN IMMEDIATE")
    for claim, ids in statements:
        changed += db.execute(statement.format(sql.marks(len(ids))), (*head, claim, *ids)).rowcount
    if also is not None:
        also(db)
    db.execute("COMMIT")
    return changed


class Leases:
    """Row id -> claim of every row fetched and not yet acked, requeued or released (thread-safe).

    Also counts the rows fetches recovered from expired leases, until a heartbeat reports them.
    """

    def __init__(self, path: str) -> None:
        self.path = path  # of the database file, for log lines
        self.reset()

    def reset(self) -> None:
        """Hold nothing, with a new lock (in a forked child: the parent's leases are not ours,
        and its threads may have held the old lock)."""
        self._lock = threading.Lock()  # guards _held and _recovered
        self._held: dict[int, int] = {}
        self._recovered = 0

    def clear(self) -> None:
        with self._lock:
            self._held = {}

    def add(self, ids: list[int], claim: int, recovered: int) -> None:
        """A fetch leased ``ids`` under ``claim``; ``recovered`` of them came from expired leases."""
        with self._lock:
            self._held.update(dict.fromkeys(ids, claim))
            self._recovered += recovered

    def forget(self, deliveries: Iterable[Delivery]) -> dict[int, list[int]]:
        """Drop ``deliveries`` from the held rows; return their ids grouped by claim."""
        by_claim: dict[int, list[int]] = {}
        held = self._held
        with self._lock:
            for d in deliveries:
                msg_id, claim = d.tag
                if held.get(msg_id) == claim:
                    del held[msg_id]
                ids = by_claim.get(claim)
                if ids is None:
                    by_claim[claim] = [msg_id]
                else:
                    ids.append(msg_id)
        return by_claim

    def grouped(self) -> dict[int, list[int]]:
        """The ids of every held row, grouped by claim."""
        by_claim: dict[int, list[int]] = {}
        with self._lock:
            for msg_id, claim in self._held.items():
                by_claim.setdefault(claim, []).append(msg_id)
        return by_claim

    def take_recovered(self) -> int:
        """Rows recovered from expired leases since the last call."""
        with self._lock:
            recovered, self._recovered = self._recovered, 0
        return recovered

    def extend(self, db: sqlite3.Connection, by_claim: dict[int, list[int]], until: float) -> None:
        """Move the lease end of ``by_claim``'s rows to ``until``; forget the rows that are no
        longer ours. Raises :class:`sqlite3.Error` for the caller to wrap."""
        kept = run_per_claim(db, sql.EXTEND, (until,), by_claim)
        if kept < sum(len(ids) for ids in by_claim.values()):
            self._drop_lost(db, by_claim)

    def _drop_lost(self, db: sqlite3.Connection, by_claim: dict[int, list[int]]) -> None:
        """Forget held rows whose lease expired and went to another consumer (or were purged)."""
        lost: list[int] = []
        for claim, ids in by_claim.items():
            for start in range(0, len(ids), sql.CHUNK):
                chunk = ids[start:start + sql.CHUNK]
                mine = {row[0] for row in db.execute(sql.STILL_MINE.format(sql.marks(len(chunk))), (claim, *chunk))}
                lost.extend(i for i in chunk if i not in mine)
        with self._lock:
            for msg_id in lost:
                self._held.pop(msg_id, None)
        if lost:
            log.warning("sqlite %s: lost the lease of %d message(s) before they were acked "
                        "(heartbeats too late?); they may run twice", self.path, len(lost))

    def release_all(self, pool: ConnectionPool) -> bool:
        """On close: make every held row ready again now, not when its lease ends. Logs a
        failure, never raises; False if nothing was held or no connection could be had."""
        by_claim = self.grouped()
        if not by_claim:
            return False
        try:
            db = pool.checkout()
        except BrokerError as exc:
            self._not_released(exc)
            return False
        try:
            run_per_claim(db, sql.RELEASE, (time.time(),), by_claim)
        except sqlite3.Error as exc:
            self._not_released(exc)
        finally:
            pool.checkin(db)
        return True

    def _not_released(self, exc: Exception) -> None:
        log.warning("sqlite %s: could not release unacked messages on close (%s); "
                    "they come back when their lease ends", self.path, exc)
