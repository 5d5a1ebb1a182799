"""Redis calls retried with backoff while Redis is unreachable or failing over."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    ClusterDownError,
    CrossSlotTransactionError,
    InvalidPipelineStack,
    MasterDownError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from callq.errors import BrokerError
from callq.url import BrokerURL

from .topology import RedisTarget

log = logging.getLogger("callq.redis")

T = TypeVar("T")

#: errors that mean "Redis unreachable or failing over": retried with backoff. The cluster
#: ones come before a command runs (no slot owner yet, cluster layout being read again).
_TRANSIENT = (RedisConnectionError, RedisTimeoutError, TimeoutError, ConnectionResetError,
              ClusterDownError, TryAgainError, MasterDownError, SlotNotCoveredError, RedisClusterException)
_PERMANENT = (CrossSlotTransactionError, InvalidPipelineStack)


class RetryingClient:
    """Runs Redis calls, retrying with backoff (redis-py ``Retry``) while Redis is unreachable."""

    def __init__(self, target: RedisTarget, url: BrokerURL, retry_for: float) -> None:
        self.target = target
        self.client = target.client
        self.url = url
        self.retry_for = retry_for
        self.closed = False
        self.failures = 0  # transient failures seen (tests and logs)

    def close(self) -> None:
        """Stop retrying and drop every connection to Redis."""
        self.closed = True
        self.target.close()

    def call(self, what: str, fn: Callable[[], T], on_error: Callable[[], None] | None = None) -> T:
        try:
            return fn()
        except _TRANSIENT as exc:
            if isinstance(exc, _PERMANENT):
                raise
            return self._retry(what, fn, on_error, exc)

    def _retry(self, what: str, fn: Callable[[], T], on_error: Callable[[], None] | None,
               exc: BaseException) -> T:
        deadline = time.monotonic() + self.retry_for
        backoff = ExponentialBackoff(cap=2.0, base=0.05)
        failures = 0
        while True:
            failures += 1
            self.failures += 1
            if on_error is not None:
                on_error()
            wait = backoff.compute(failures)
            if self.closed or time.monotonic() + wait > deadline:
                raise BrokerError(f"redis {self.url}: {what} failed: {type(exc).__name__}: {exc}") from exc
            log.warning("redis %s: %s failed (%s: %s); retrying in %.2fs",
                        self.url, what, type(exc).__name__, exc, wait)
            time.sleep(wait)
            try:
                result = fn()
            except _TRANSIENT as again:
                if isinstance(again, _PERMANENT):
                    raise
                exc = again
                continue
            log.warning("redis %s: %s succeeded again after %d failure(s)", self.url, what, failures)
            return result


