"""``redis://host:6379/0[?prefix=callq]``: a result store for ``callq.results``.

A record is a Redis string ``<prefix>:result:<id>`` with the result's TTL. A waiter sets
``<prefix>:result-waiters`` (someone waits, store-wide) and ``<prefix>:result:<id>:waiting``,
reads the record, then blocks on BLPOP of ``<prefix>:result:<id>:wake``, which the writer
pushes once the call is final if someone waits (the waiter pushes the token back for other
waiters): no polling loop, and no wake list for results nobody waits for. While nobody waits
anywhere, a batch of records costs the writer one ``EXISTS``, not one per record.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import orjson
import redis

from callq.errors import BrokerError, ConfigError
from callq.results.store import FINAL
from callq.url import BrokerURL

from ._lua import PUT_RESULTS
from .client import HeldScript
from .topology import open_target

#: longest single BLPOP (a longer wait loops)
BLOCK = 5.0
_dumps = orjson.dumps

# One round trip per batch (the same Lua the list broker runs when results go with its acks)
_PUT = PUT_RESULTS + "return put_results(1)"


def store_prefix(url: BrokerURL) -> str:
    """The key prefix of the result store at ``url`` (brokers writing its records use it too)."""
    return url.str_param("prefix", "callq") or "callq"


def result_args(prefix: str, items: Sequence[tuple[str, dict[str, Any], float]]) -> list[Any]:
    """``PUT_RESULTS`` arguments for ``(id, record, ttl seconds)`` items: runs of one TTL and
    finality, in the items' order (a later record of a call replaces an earlier one)."""
    args: list[Any] = [prefix]
    head = -1
    run: tuple[int, int] | None = None
    seen: tuple[float, Any] | None = None  # the (ttl, status) ``run`` was made from
    for call_id, record, ttl in items:
        status = record.get("status")
        if seen is None or seen[0] != ttl or seen[1] != status:
            seen = (ttl, status)
            key = (max(1, int(ttl * 1000)), 1 if status in FINAL else 0)
            if key != run:
                if head >= 0:
                    args[head] = (len(args) - head - 3) // 2
                run, head = key, len(args)
                args += (0, *key)
        args += (call_id, _dumps(record))
    if head >= 0:
        args[head] = (len(args) - head - 3) // 2
    return args


class RedisResultStore:
    def __init__(self, url: str) -> None:
        parsed = BrokerURL.parse(url)
        self.url = parsed
        self.prefix = store_prefix(parsed)
        self.waiters_key = f"{self.prefix}:result-waiters"
        target = open_target(parsed, socket_timeout=10.0)
        if target.cluster:
            target.close()
            raise ConfigError(f"result store {parsed}: Redis Cluster is not supported for results; "
                              "use redis:// or redis+sentinel://, or a SQL store")
        self.client = target.client
        self.blocking = open_target(parsed, socket_timeout=BLOCK + 5.0).client
        self._put = HeldScript(self.client, _PUT)  # a chunk's write without the pool's checkout

    def _key(self, call_id: str) -> str:
        return f"{self.prefix}:result:{call_id}"

    def put_many(self, items: Sequence[tuple[str, dict[str, Any], float]]) -> None:
        args = result_args(self.prefix, items)
        self._run("store results", lambda: self._put(keys=[], args=args))

    def get(self, call_id: str) -> dict[str, Any] | None:
        raw = self._run("read a result", lambda: self.client.get(self._key(call_id)))
        return json.loads(raw) if raw else None

    def wait(self, call_id: str, timeout: float | None) -> dict[str, Any] | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        wake = self._key(call_id) + ":wake"
        waiting = self._key(call_id) + ":waiting"
        while True:
            # announce the waiter first (store-wide, then this call): a final write after this
            # pushes a wake token, one before it is seen by the GET (the writer's script is atomic)
            self._run("wait for a result", lambda: self._announce(waiting))
            record = self.get(call_id)
            if record is not None and record.get("status") in FINAL:
                return record
            left = BLOCK if deadline is None else min(BLOCK, deadline - time.monotonic())
            if left <= 0:
                return None
            block = max(left, 0.01)
            popped = self._run("wait for a result", lambda b=block: self.blocking.blpop([wake], timeout=b))
            if popped:  # give the token back for other waiters of the same call
                self._run("wait for a result", lambda: self._give_back(wake))

    def _announce(self, waiting: str) -> None:
        ttl = int((BLOCK + 5) * 1000)
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.waiters_key, 1, px=ttl)
        pipe.set(waiting, 1, px=ttl)
        pipe.execute()

    def _give_back(self, wake: str) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.rpush(wake, 1)
        pipe.pexpire(wake, 60_000)
        pipe.execute()

    def _run(self, what: str, fn: Any) -> Any:
        try:
            return fn()
        except redis.RedisError as exc:
            raise BrokerError(f"redis result store {self.url}: could not {what}: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        self._put.close()
        self.client.close()
        self.blocking.close()
