"""Redis calls retried with backoff while Redis is unreachable or failing over."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    ClusterDownError,
    CrossSlotTransactionError,
    InvalidPipelineStack,
    MasterDownError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from callq.errors import BrokerError, ConfigError
from callq.url import BrokerURL

from .topology import RedisTarget

log = logging.getLogger("callq.redis")

T = TypeVar("T")

#: errors that mean "Redis unreachable or failing over": retried with backoff. The cluster
#: ones come before a command runs (no slot owner yet, cluster layout being read again).
_TRANSIENT = (RedisConnectionError, RedisTimeoutError, TimeoutError, ConnectionResetError,
              ClusterDownError, TryAgainError, MasterDownError, SlotNotCoveredError, RedisClusterException)
_PERMANENT = (CrossSlotTransactionError, InvalidPipelineStack, AuthenticationError, AuthorizationError)


def describe_error(exc: BaseException) -> str:
    """The cause's text: the socket error's (``connection refused``) when there is one."""
    e: BaseException | None = exc
    while e is not None:
        if isinstance(e, OSError) and e.strerror:
            return e.strerror[:1].lower() + e.strerror[1:]
        e = e.__cause__ or e.__context__
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class RetryingClient:
    """Runs Redis calls, retrying with backoff (redis-py ``Retry``) while Redis is unreachable.

    Until a first call succeeded (``connect``), Redis being unreachable fails within
    ``connect_timeout``; a connection lost later is retried for ``retry_for`` seconds.
    """

    def __init__(self, target: RedisTarget, url: BrokerURL, retry_for: float, connect_timeout: float = 5.0) -> None:
        self.target = target
        self.client = target.client
        self.url = url
        self.retry_for = retry_for
        self.connect_timeout = connect_timeout
        self.connected = False
        self.closed = False
        self.failures = 0  # transient failures seen (tests and logs)

    def connect(self) -> None:
        """Reach Redis once (PING) or raise: BrokerError (unreachable, refused login), ConfigError (bad DB)."""
        try:
            self.call("connect", self.client.ping)
        except BrokerError:
            raise
        except (AuthenticationError, AuthorizationError) as exc:
            raise BrokerError(f"cannot connect to Redis at {self.url}: {describe_error(exc)}") from exc
        except ResponseError as exc:  # e.g. "DB index is out of range" from SELECT
            raise ConfigError(f"broker URL {self.url}: Redis refused it: {exc}") from exc
        except redis.RedisError as exc:
            raise BrokerError(f"cannot connect to Redis at {self.url}: {describe_error(exc)}") from exc

    def close(self) -> None:
        """Stop retrying and drop every connection to Redis."""
        self.closed = True
        self.target.close()

    def call(self, what: str, fn: Callable[[], T], on_error: Callable[[], None] | None = None) -> T:
        try:
            result = fn()
        except _TRANSIENT as exc:
            if isinstance(exc, _PERMANENT):
                raise
            result = self._retry(what, fn, on_error, exc)
        self.connected = True
        return result

    def run(self, what: str, fn: Callable[..., T], *args: object) -> T:
        """``call(what, partial(fn, *args))`` without building the partial (the publish path)."""
        try:
            result = fn(*args)
        except _TRANSIENT as exc:
            if isinstance(exc, _PERMANENT):
                raise
            result = self._retry(what, partial(fn, *args), None, exc)
        self.connected = True
        return result

    def _retry(self, what: str, fn: Callable[[], T], on_error: Callable[[], None] | None,
               exc: BaseException) -> T:
        first = not self.connected
        deadline = time.monotonic() + (self.connect_timeout if first else self.retry_for)
        backoff = ExponentialBackoff(cap=2.0, base=0.05)
        failures = 0
        while True:
            failures += 1
            self.failures += 1
            if on_error is not None:
                on_error()
            wait = backoff.compute(failures)
            if self.closed or time.monotonic() + wait > deadline:
                if first:
                    raise BrokerError(f"cannot connect to Redis at {self.url}: {describe_error(exc)}") from exc
                raise BrokerError(f"redis {self.url}: {what} failed: {type(exc).__name__}: {exc}") from exc
            log.log(logging.DEBUG if first else logging.WARNING, "redis %s: %s failed (%s: %s); retrying in %.2fs",
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


