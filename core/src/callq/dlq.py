"""Dead letters: look at them, put them back on their queue, or delete them.

A dead-lettered message is the call's keyword arguments plus ``_callq.dead`` (reason, error,
traceback, queue, time, host). Listing fetches and gives every message back at once; replay
publishes the call on its queue again with a fresh attempt count (same id, so a waiting
``result()`` still gets it) and acks the dead letter.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from .broker import Connection, Delivery
from .message import MalformedMessage, decode, encode

log = logging.getLogger("callq.dlq")

FETCH = 200
WAIT = 0.1


@dataclass
class DeadLetter:
    id: str | None
    queue: str | None
    kwargs: dict[str, Any]
    reason: str | None
    error_type: str | None
    error: str | None
    traceback: str | None
    at: float | None
    attempt: int
    raw: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def replayable(self) -> bool:
        return self.raw is None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "meta"}


def parse(body: bytes) -> DeadLetter:
    try:
        kwargs, meta = decode(body)
    except MalformedMessage as exc:
        return DeadLetter(None, None, {}, f"undecodable dead letter: {exc}", None, None, None, None, 0,
                          raw=body.decode(errors="replace"))
    dead = meta.get("dead") if isinstance(meta.get("dead"), dict) else {}
    raw = dead.get("raw") or dead.get("raw_base64")
    attempt = meta.get("attempt", 0)
    return DeadLetter(
        id=meta.get("id"), queue=dead.get("queue"), kwargs=kwargs, reason=dead.get("reason"),
        error_type=dead.get("error_type"), error=dead.get("error"), traceback=dead.get("traceback"),
        at=dead.get("at"), attempt=attempt if isinstance(attempt, int) else 0, raw=raw, meta=meta)


def _fetch_all(conn: Connection, dlq: str, limit: int | None) -> list[Delivery]:
    got: list[Delivery] = []
    while limit is None or len(got) < limit:
        n = FETCH if limit is None else min(FETCH, limit - len(got))
        batch = conn.fetch(dlq, n, WAIT)
        if not batch:
            break
        got += batch
    return got


def peek(conn: Connection, dlq: str, limit: int = 100) -> list[DeadLetter]:
    """Up to ``limit`` dead letters of ``dlq``; they stay on it."""
    deliveries = _fetch_all(conn, dlq, limit)
    try:
        return [parse(d.body) for d in deliveries]
    finally:
        conn.requeue(deliveries)


def replay(conn: Connection, dlq: str, *, ids: Collection[str] | None = None,
           queue: str | None = None, results: str | None = None) -> tuple[int, list[str]]:
    """Put dead letters (all, or those with these ids) back on their queue (or ``queue``).

    ``results``: the calls' result store URL; their records go back to ``pending`` first so
    ``result()`` waits for the new run. Returns how many were replayed and why others were not.
    """
    deliveries = _fetch_all(conn, dlq, None)
    keep: list[Delivery] = []
    done: list[Delivery] = []
    problems: list[str] = []
    wanted = set(ids) if ids else None
    for delivery in deliveries:
        letter = parse(delivery.body)
        if wanted is not None and letter.id not in wanted:
            keep.append(delivery)
            continue
        target = queue or letter.queue
        if not letter.replayable or not target:
            problems.append(f"{letter.id or '(no id)'}: {letter.reason or 'not a call'}; left on {dlq}")
            keep.append(delivery)
            continue
        meta = {k: v for k, v in letter.meta.items() if k not in ("dead", "last_error", "eta", "expires_at")}
        meta["attempt"] = 0
        meta["replayed_at"] = time.time()
        if results and letter.id:
            _reset_result(results, letter.id, target)
        try:
            conn.publish(target, [encode(letter.kwargs, meta, where="replay")])
        except Exception as exc:  # noqa: BLE001 - keep the dead letter; report why
            problems.append(f"{letter.id}: publish to {target} failed: {type(exc).__name__}: {exc}")
            keep.append(delivery)
            continue
        done.append(delivery)
    conn.ack(done)
    conn.requeue(keep)
    if wanted is not None:
        seen = {parse(d.body).id for d in deliveries}
        problems += [f"{i}: not found on {dlq}" for i in sorted(wanted - seen)]
    log.info("replayed %d dead letter(s) from %s", len(done), dlq)
    return len(done), problems


def _reset_result(url: str, call_id: str, queue: str) -> None:
    from .results import open_store

    try:
        open_store(url).put_many([(call_id, {"id": call_id, "status": "pending", "queue": queue}, 3600.0)])
    except Exception as exc:  # noqa: BLE001 - the replay itself matters more
        log.warning("could not reset the result of %s: %s: %s", call_id, type(exc).__name__, exc)


def default_results(conn: Connection, queue: str) -> str | None:
    """The result store a task on this broker uses by default (None if none)."""
    from .options import TaskOptions
    from .results import store_url_for

    try:
        return store_url_for(TaskOptions(queue=queue, broker=conn.url.raw))
    except Exception:  # noqa: BLE001
        return None


def purge(conn: Connection, dlq: str) -> int:
    return conn.purge(dlq)


def dlq_name(queue: str) -> str:
    """The default dead-letter queue of ``queue`` (see TaskOptions.dead_letter_queue)."""
    return f"{queue}.dlq"
