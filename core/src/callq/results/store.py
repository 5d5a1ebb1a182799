"""Result stores: where return values wait for ``push(...).result()``.

A store is found by URL scheme through the entry-point group ``callq.result_stores``
(core ships ``memory``, ``sqlite``, ``postgresql``, ``mysql``/``mariadb``; callq-redis ships
``redis``/``rediss``). A record is a JSON object::

    {"id", "status", "result", "error": {"type", "message", "traceback"} | null,
     "attempt", "queue", "task", "reason", "started_at", "finished_at"}
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

import orjson

from ..errors import ConfigError

GROUP = "callq.result_stores"

STATUSES = ("pending", "running", "done", "failed", "dead", "expired", "skipped")
#: statuses after which the call will not run again
FINAL = frozenset(("done", "failed", "dead", "expired", "skipped"))

Record = dict[str, Any]
SQL_SCHEMES = ("postgresql", "postgres", "mysql", "mariadb")  # callq-sql brokers


@runtime_checkable
class ResultStore(Protocol):
    """Thread-safe; shared by every process that uses the same URL."""

    def put_many(self, items: Sequence[tuple[str, Record, float]]) -> None:
        """Store ``(id, record, ttl seconds)`` items; later items replace earlier ones."""
        ...

    def get(self, call_id: str) -> Record | None:
        """The record of ``call_id``, or None if none (yet, or expired)."""
        ...

    def wait(self, call_id: str, timeout: float | None) -> Record | None:
        """Block until the record's status is final and return it; None on timeout."""
        ...

    def close(self) -> None: ...


class PollingWait:
    """``wait`` for stores that cannot block on a key: wake at once for writes made in this
    process, else look again with a growing interval (10 ms .. 250 ms)."""

    _cond: threading.Condition
    #: longest pause between two looks (a store that is told of writes may look rarely)
    max_pause = 0.25

    def _init_wait(self) -> None:
        self._cond = threading.Condition()

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def get(self, call_id: str) -> Record | None:  # pragma: no cover - provided by the store
        raise NotImplementedError

    def wait(self, call_id: str, timeout: float | None) -> Record | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.01 if self.max_pause <= PollingWait.max_pause else self.max_pause
        while True:
            record = self.get(call_id)
            if record is not None and record.get("status") in FINAL:
                return record
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            with self._cond:
                self._cond.wait(pause if left is None else min(pause, left))
            told = self.max_pause > PollingWait.max_pause  # writes are announced: no need to hurry
            pause = self.max_pause if told else min(pause * 1.5, self.max_pause)


class StateResultStore(PollingWait):
    """Results in a broker's shared key-value store (:class:`callq.state.StateStore`)."""

    def __init__(self, broker_url: str) -> None:
        from ..broker import connect

        self.url = broker_url
        self._state = connect(broker_url).state
        self._init_wait()

    def put_many(self, items: Sequence[tuple[str, Record, float]]) -> None:
        for call_id, record, ttl in items:
            self._state.put(_key(call_id), orjson.dumps(record).decode(), ttl=ttl)
        self._notify()

    def get(self, call_id: str) -> Record | None:
        text = self._state.get(_key(call_id))
        return json.loads(text) if text else None

    def close(self) -> None:
        pass


def _key(call_id: str) -> str:
    return f"callq:result:{call_id}"


# --- opening stores -----------------------------------------------------------------------------

_stores: dict[tuple[int, str], ResultStore] = {}
_lock = threading.Lock()


def store_schemes() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def open_store(url: str) -> ResultStore:
    """The process's shared result store for ``url`` (``state+<broker url>`` = a broker's store)."""
    key = (os.getpid(), url)
    store = _stores.get(key)
    if store is not None:
        return store
    with _lock:
        store = _stores.get(key)
        if store is None:
            store = _open(url)
            _stores[key] = store
    return store


def _open(url: str) -> ResultStore:
    if url.startswith("state+"):
        return StateResultStore(url[len("state+"):])
    if "://" not in url:
        raise ConfigError(f"result store URL {url!r} has no scheme (e.g. redis://localhost:6379/0)")
    scheme = url.split("://", 1)[0].split("+", 1)[0].lower()
    eps = store_schemes()
    if scheme not in eps:
        raise ConfigError(f"no result store for URL scheme {scheme!r} ({_mask(url)}); installed: "
                          f"{', '.join(sorted(eps)) or 'none'} (redis:// needs callq-redis)")
    cls = eps[scheme].load()
    return cls(url)  # type: ignore[no-any-return]


def _mask(url: str) -> str:
    from ..url import BrokerURL

    try:
        return str(BrokerURL.parse(url))
    except Exception:  # noqa: BLE001 - only for a message
        return url.split("://", 1)[0] + "://..."


_resolved: dict[int, tuple[Any, str | None]] = {}


def store_url_for(options: Any) -> str | None:
    """Which store keeps the results of a task with these options (None: results are off).

    ``results=None``: the broker's own store (a result store for the broker's scheme, else the
    broker's shared key-value store), off if it has neither; ``True``: the same, required;
    ``False``: off; a URL: that store.
    """
    hit = _resolved.get(id(options))
    if hit is not None and hit[0] is options:
        return hit[1]
    url = _resolve(options)
    _resolved[id(options)] = (options, url)
    return url


def _resolve(options: Any) -> str | None:
    wanted = options.results
    if wanted is False:
        return None
    if isinstance(wanted, str):
        return wanted
    from ..broker import connect, resolve_url

    broker = resolve_url(options.broker)
    scheme = broker.split("://", 1)[0].lower()
    if scheme in store_schemes() and scheme not in SQL_SCHEMES:
        return broker  # redis: the broker's server; sqlite: the broker's file; memory: its process
    # SQL brokers: their own state table (their URL carries broker parameters, not a store's)
    conn = connect(broker)
    if conn.capabilities.shared_state:
        return "state+" + broker
    if wanted is True:
        raise ConfigError(f"results=True: broker {conn.url} has no shared store for results; "
                          "give results= a store URL (redis://..., sqlite:///..., postgresql://...)")
    return None


def close_all() -> None:
    with _lock:
        stores = [s for (pid, _), s in _stores.items() if pid == os.getpid()]
        _stores.clear()
    for store in stores:
        try:
            store.close()
        except Exception:  # noqa: BLE001, S110 - closing on shutdown must not raise
            pass
