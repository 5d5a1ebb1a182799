"""The default results plugin: a control that writes each call's status and result to its
task's store (only for tasks that keep results).

Writes go through one background thread per process that batches them (one round trip for
many calls under load, no waiting when idle), so a call's thread never waits on the store.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import defaultdict, deque
from typing import Any

from ..controls import Control
from ..hookspecs import hookimpl
from ..message import dumps
from .store import Record, open_store, store_url_for

log = logging.getLogger("callq.results")

#: outcome of a call -> status of its result record. A retry or requeue writes nothing: the
#: next attempt may already have finished in another thread, and its record must stay.
STATUS_OF = {"done": "done", "dead": "dead", "expired": "expired", "skipped": "skipped"}


#: the writer waits this long after waking to gather a batch (unless one is already there)
LINGER = 0.002


class Writer:
    """Batches ``(store url, id, record, ttl)`` writes, in order.

    A put wakes the background thread only when it sleeps; once awake it gathers what
    arrives within :data:`LINGER` and writes it in one round trip per store. Only single
    calls' records come here (``running``, then final, in order); a thread that ran a chunk
    of calls writes their final records itself (:func:`write`): one round trip per chunk,
    and no writer thread holding the GIL while the next calls wait for it.
    """

    def __init__(self) -> None:
        self._items: deque[tuple[str, str, Record, float]] = deque()
        self._cond = threading.Condition()
        self._pid = 0
        self._busy = False
        self._idle = False

    def put(self, url: str, call_id: str, record: Record, ttl: float) -> None:
        self.put_many([(url, call_id, record, ttl)])

    def put_many(self, items: list[tuple[str, str, Record, float]]) -> None:
        if self._pid != os.getpid():
            self._start()
        self._items.extend(items)
        if self._idle:  # the writer sets _idle before it looks at _items, so no wake-up is lost
            with self._cond:
                self._cond.notify()

    def _start(self) -> None:
        with _start_lock:
            if self._pid == os.getpid():
                return
            self._cond = threading.Condition()
            self._items = deque(self._items) if self._pid == 0 else deque()
            threading.Thread(target=self._loop, name="callq-results", daemon=True).start()
            self._pid = os.getpid()

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._idle = True
                while not self._items:
                    self._busy = False
                    self._cond.notify_all()
                    self._cond.wait(0.5)
                self._idle = False
                self._busy = True
            if len(self._items) < 500:
                time.sleep(LINGER)
            self._write_batch()

    def _write_batch(self) -> None:
        # by store, then by id: a later record of a call (done) replaces an earlier one (running)
        batch: dict[str, dict[str, tuple[str, Record, float]]] = defaultdict(dict)
        pop = self._items.popleft
        try:
            for _ in range(5000):
                url, call_id, record, ttl = pop()
                batch[url][call_id] = (call_id, record, ttl)
        except IndexError:
            pass
        for url, by_id in batch.items():
            write(url, list(by_id.values()))

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued write was attempted."""
        if self._pid != os.getpid():
            return True
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._items or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True


def write(url: str, items: list[tuple[str, Record, float]]) -> None:
    try:
        open_store(url).put_many(items)
    except Exception as exc:  # noqa: BLE001 - a store outage must not stop the writer or a call
        log.error("could not store %d result(s) in %s: %s: %s", len(items),
                  url.split("://", 1)[0] + "://...", type(exc).__name__, exc)


_start_lock = threading.Lock()
writer = Writer()
atexit.register(writer.flush)


class ResultsControl(Control):
    """Writes ``running`` when a thread takes the call and the final status once it settled.

    It only observes (``started_many`` / ``settled_many``), so the consumer keeps its fast path:
    a chunk of short calls writes its records in one go. Applies only to tasks that keep results.
    """

    name = "results"
    order = 900

    @classmethod
    def applies(cls, task_options: Any, options: Any) -> bool:
        return store_url_for(task_options) is not None

    def __init__(self, consumer: Any, options: Any) -> None:
        super().__init__(consumer, options)
        self.url = store_url_for(consumer.task.options)
        self.ttl = consumer.task.options.result_ttl
        self.settler = consumer.settler
        if self.url:
            open_store(self.url)  # a bad store URL fails the consumer's start, not each call
        # the store lives with the queue: a chunk's records go with its acks, no round trip of their own
        self.carried = bool(self.url) and consumer.conn.carries_results(self.url)

    def started_many(self, calls: list[Any]) -> None:
        if len(calls) > 1:
            return  # a chunk of short calls: its final records are written when it ends
        call = calls[0]
        if call.id:
            writer.put(self.url, call.id, {"id": call.id, "status": "running", "attempt": call.attempt,
                                           "queue": call.queue, "started_at": time.time()}, self.ttl)

    def settled_many(self, calls: list[Any]) -> None:
        url, ttl = self.url, self.ttl
        records = [(call.id, self._record(call, status), ttl) for call in calls
                   if call.id is not None and (status := STATUS_OF.get(call.outcome or "")) is not None]
        if not records:
            return
        if len(calls) > 1:
            # a chunk wrote no running records: its final ones go with the next acks, or straight
            # to the store from this thread (two fetch lanes write side by side, not in turn)
            if self.carried:
                self.settler.carry(records)
            else:
                write(url, records)
        else:  # after its running record, through the writer, in order
            writer.put_many([(url, *record) for record in records])

    @staticmethod
    def _record(call: Any, status: str) -> Record:
        record = _record(call, status)
        if status == "done":
            try:
                _check_json(call.result)
                record["result"] = call.result
            except (TypeError, ValueError) as exc:
                log.error("%s: call %s returned a %s, which is not JSON; its result is not stored (%s)",
                          call.task.name, call.id, type(call.result).__name__, exc)
                record["status"] = "failed"
                record["error"] = {"type": "TypeError", "traceback": None,
                                   "message": f"the result ({type(call.result).__name__}) is not JSON-serialisable; "
                                              "callq stores JSON results only"}
        return record

    def stop(self) -> None:
        left = self.settler.take_carried()  # the broker was gone for the last acks: try the store
        if left:
            write(self.url, left)
        writer.flush()


class ResultsPlugin:
    """Registered by default as ``callq.default.results``: adds :class:`ResultsControl`."""

    @hookimpl
    def callq_controls(self) -> list[type[Control]]:
        return [ResultsControl]

    @hookimpl
    def callq_consumer_stopped(self, consumer: Any) -> None:
        writer.flush()


def _record(call: Any, status: str) -> Record:
    exc = call.error
    error = None
    if exc is not None:
        error = {"type": type(exc).__name__, "message": str(exc), "traceback": call.traceback
                 if hasattr(call, "traceback") else _format(exc)}
    return {"id": call.id, "status": status, "result": None, "error": error, "attempt": call.attempt,
            "queue": call.queue, "task": call.task.name, "reason": getattr(call, "reason", None),
            "started_at": call.started_at or None, "finished_at": call.finished_at or None}


def _check_json(value: Any) -> None:
    """TypeError/ValueError unless ``value`` is JSON (NaN and Infinity are not)."""
    if value is None or type(value) in (str, int, bool):
        return
    dumps(value)


def _format(exc: BaseException) -> str:
    import traceback

    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
