"""Live consumers and known queues, kept in the broker's shared store from heartbeats.

The default plugin ``consumers`` writes ``callq:live:<queue>:<consumer id>`` (JSON: host,
pid, concurrency, qps, running calls, done/failed counts and their rate since the previous
heartbeat) with a short TTL on every heartbeat, and ``callq:queue:<queue>`` (30 days) when a
consumer starts. ``callq status`` and the dashboard read them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import Any

from .hookspecs import hookimpl
from .state import StateStore

log = logging.getLogger("callq.registry")

LIVE = "callq:live:"
QUEUES = "callq:queue:"
QUEUE_TTL = 30 * 86400.0
HOST = socket.gethostname()


def _state(consumer: Any) -> StateStore | None:
    try:
        return consumer.state  # type: ignore[no-any-return]
    except Exception:  # noqa: BLE001 - brokers without a shared store keep no registry
        return None


class ConsumerRegistry:
    def __init__(self) -> None:
        self._last: dict[str, tuple[float, int, int]] = {}

    def _write(self, consumer: Any, ttl: float) -> None:
        store = _state(consumer)
        if store is None:
            return
        stats = consumer.stats()
        now = time.time()
        cid = consumer.consumer_id
        prev = self._last.get(cid)
        rate = fail_rate = 0.0
        if prev is not None and now > prev[0]:
            rate = max(0.0, (stats.done - prev[1]) / (now - prev[0]))
            fail_rate = max(0.0, (stats.failed - prev[2]) / (now - prev[0]))
        self._last[cid] = (now, stats.done, stats.failed)
        opts = consumer.options
        entry = {"id": cid, "queue": consumer.queue, "task": consumer.task.name, "host": HOST,
                 "pid": os.getpid(), "concurrency": opts.concurrency, "qps": opts.qps,
                 "running": stats.running, "threads": stats.threads, "received": stats.received,
                 "done": stats.done, "failed": stats.failed, "dead": stats.dead,
                 "rate": round(rate, 3), "fail_rate": round(fail_rate, 3), "at": now,
                 "started": now - stats.elapsed}
        try:
            store.put(f"{LIVE}{consumer.queue}:{cid}", json.dumps(entry), ttl=ttl)
        except Exception as exc:  # noqa: BLE001 - the registry is best effort
            log.debug("consumer registry write failed: %s", exc)

    @hookimpl
    def callq_consumer_started(self, consumer: Any) -> None:
        store = _state(consumer)
        if store is None:
            return
        try:
            store.put(QUEUES + consumer.queue, json.dumps({"broker": str(consumer.conn.url),
                                                           "dlq": consumer.options.dlq}), ttl=QUEUE_TTL)
        except Exception as exc:  # noqa: BLE001
            log.debug("queue registry write failed: %s", exc)
        self._write(consumer, ttl=_ttl(consumer))

    @hookimpl
    def callq_heartbeat_seen(self, consumer: Any, recovered: int) -> None:
        self._write(consumer, ttl=_ttl(consumer))

    @hookimpl
    def callq_consumer_stopped(self, consumer: Any) -> None:
        store = _state(consumer)
        self._last.pop(consumer.consumer_id, None)
        if store is not None:
            try:
                store.delete(f"{LIVE}{consumer.queue}:{consumer.consumer_id}")
            except Exception as exc:  # noqa: BLE001
                log.debug("consumer registry delete failed: %s", exc)


def _ttl(consumer: Any) -> float:
    return max(3.0, 3 * float(getattr(consumer.conn, "heartbeat_interval", 5.0)))


def live_consumers(store: StateStore, queue: str | None = None) -> list[dict[str, Any]]:
    """The consumers whose heartbeat is recent, optionally of one queue."""
    prefix = LIVE + (f"{queue}:" if queue else "")
    out = []
    for value in store.scan(prefix).values():
        try:
            entry = json.loads(value)
        except ValueError:
            continue
        if queue is None or entry.get("queue") == queue:
            out.append(entry)
    return sorted(out, key=lambda e: (e.get("queue", ""), e.get("host", ""), e.get("pid", 0)))


def known_queues(store: StateStore) -> dict[str, dict[str, Any]]:
    """Queues a consumer ever started on (last 30 days), with their dead-letter queue."""
    out = {}
    for key, value in store.scan(QUEUES).items():
        try:
            out[key[len(QUEUES):]] = json.loads(value)
        except ValueError:
            continue
    return out
