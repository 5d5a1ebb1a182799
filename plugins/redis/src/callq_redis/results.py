"""``redis://host:6379/0[?prefix=callq]``: a result store for ``callq.results``.

A record is a Redis string ``<prefix>:result:<id>`` with the result's TTL. Waiting blocks
on BLPOP of ``<prefix>:result:<id>:wake``, which the writer pushes once the call is final
(the waiter pushes the token back for other waiters): no polling loop.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import redis

from callq.errors import BrokerError
from callq.results.store import FINAL
from callq.url import BrokerURL

from .broker import redis_client

#: longest single BLPOP (a longer wait loops)
BLOCK = 5.0


class RedisResultStore:
    def __init__(self, url: str) -> None:
        parsed = BrokerURL.parse(url)
        self.url = parsed
        self.prefix = parsed.str_param("prefix", "callq") or "callq"
        plain = BrokerURL.parse(url.split("?", 1)[0])
        self.client = redis_client(plain, socket_timeout=10.0)
        self.blocking = redis_client(plain, socket_timeout=BLOCK + 5.0)

    def _key(self, call_id: str) -> str:
        return f"{self.prefix}:result:{call_id}"

    def put_many(self, items: Sequence[tuple[str, dict[str, Any], float]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for call_id, record, ttl in items:
            key = self._key(call_id)
            px = max(1, int(ttl * 1000))
            pipe.set(key, json.dumps(record), px=px)
            if record.get("status") in FINAL:
                pipe.rpush(key + ":wake", 1)
                pipe.pexpire(key + ":wake", px)
        self._run("store results", pipe.execute)

    def get(self, call_id: str) -> dict[str, Any] | None:
        raw = self._run("read a result", lambda: self.client.get(self._key(call_id)))
        return json.loads(raw) if raw else None

    def wait(self, call_id: str, timeout: float | None) -> dict[str, Any] | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        wake = self._key(call_id) + ":wake"
        while True:
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
        self.client.close()
        self.blocking.close()
