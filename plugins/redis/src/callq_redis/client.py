"""Redis calls retried with backoff while Redis is unreachable or failing over."""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    ClusterDownError,
    CrossSlotTransactionError,
    InvalidPipelineStack,
    MasterDownError,
    NoScriptError,
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




class HeldConnection:
    """A connection of the client's pool held out of it for single writes (``publish``).

    redis-py checks a connection out of its pool and back in for every command (a lock, a
    ``select`` for stray data, pool metrics: ~15-30 µs of CPU on this machine, more than the
    rest of ``push``). This sends one command on a connection held for the purpose instead,
    one thread at a time; a thread that finds it busy, a cluster client, or a pool with a
    client-side cache goes through the client as before. The connection goes back to the
    pool at least every ``HOLD`` seconds, so what the pool does on check-in and check-out
    (re-authentication, maintenance notices, metrics) is at most that late. redis-py's
    connection still sends its health checks and reconnects; any error but a Redis error
    reply disconnects it (a reply may be left unread).
    """

    HOLD = 1.0

    def __init__(self, client: object) -> None:
        self.client = client
        pool = getattr(client, "connection_pool", None)
        self.pool = pool if pool is not None and getattr(pool, "cache", None) is None else None
        # redis-py 5.0-5.2 wants a command name, later versions warn when given one
        needs_name = self.pool is not None and inspect.signature(
            self.pool.get_connection).parameters["command_name"].default is inspect.Parameter.empty
        self._checkout_args: tuple[str, ...] = ("LPUSH",) if needs_name else ()
        self.lock = threading.Lock()
        self.conn: object | None = None
        self.pid = 0
        self.until = 0.0  # monotonic time to give the connection back
        self.utf8 = False  # the held connection encodes text as UTF-8, strict: pack() may build its commands
        _held.add(self)

    def _after_fork_in_child(self) -> None:
        self.lock = threading.Lock()  # another thread may have held it at the fork
        self.conn = None  # the parent's socket

    def execute(self, *args: object) -> object:
        result = self.try_execute(args)
        return self.client.execute_command(*args) if result is BUSY else result  # type: ignore[attr-defined]

    def try_execute(self, args: tuple[object, ...]) -> object:
        """The reply, or BUSY if another thread holds the connection (or there is none to hold)."""
        pool = self.pool
        if pool is None or not self.lock.acquire(blocking=False):
            return BUSY
        try:
            conn = self.conn
            if conn is None or self.pid != os.getpid() or time.monotonic() > self.until:
                conn = self._checkout(conn)
            try:
                conn.send_packed_command(self._pack(conn, args))  # type: ignore[attr-defined]
                return conn.read_response()  # type: ignore[attr-defined]
            except ResponseError:
                raise  # an error reply, read whole: the connection is fine
            except BaseException:
                conn.disconnect()  # type: ignore[attr-defined]
                raise
        finally:
            self.lock.release()

    def _pack(self, conn: Any, args: tuple[object, ...]) -> list[bytes]:
        if self.utf8:
            try:
                return [pack(args)]
            except _Unpackable:
                pass
        return conn.pack_command(*args)  # type: ignore[no-any-return]

    def _checkout(self, held: object | None) -> object:
        """Give back the held connection (not after a fork: the parent's is not ours), take one."""
        pool = self.pool
        self.conn = None
        if held is not None and self.pid == os.getpid():
            pool.release(held)  # type: ignore[union-attr]
        conn = pool.get_connection(*self._checkout_args)  # type: ignore[union-attr]
        self.conn, self.pid, self.until = conn, os.getpid(), time.monotonic() + self.HOLD
        encoder = getattr(conn, "encoder", None)
        self.utf8 = getattr(encoder, "encoding", None) == "utf-8" and getattr(encoder, "encoding_errors", None) == "strict"
        return conn

    def close(self) -> None:
        """Give the connection back to the pool (whose disconnect then closes it)."""
        with self.lock:
            conn, self.conn = self.conn, None
            if conn is not None and self.pid == os.getpid() and self.pool is not None:
                self.pool.release(conn)


def pack(args: tuple[object, ...]) -> bytes:
    """A command (a one-word name, then bytes, str or int arguments) in RESP, exactly as
    redis-py's ``pack_command`` builds it, at a third of its cost (a batch of results is 80+
    arguments); anything else raises for redis-py's packer to take."""
    if type(args[0]) is not str or not args[0].isalpha():
        raise _Unpackable  # redis-py splits a command name at spaces ("CONFIG GET")
    parts = [b"*%d" % len(args)]
    add, heads = parts.append, _HEADS
    for arg in args:
        kind = type(arg)
        if kind is bytes:
            data = arg
        elif kind is str:
            data = arg.encode()  # type: ignore[attr-defined]
        elif kind is int:
            data = b"%d" % arg  # type: ignore[str-format]
        else:
            raise _Unpackable
        n = len(data)  # type: ignore[arg-type]
        add(heads[n] if n < _SHORT else b"$%d" % n)
        add(data)  # type: ignore[arg-type]
    add(b"")
    return b"\r\n".join(parts)


_SHORT = 4096
#: ``$<length>`` of the arguments shorter than _SHORT, made once (formatting each took a third of pack)
_HEADS = tuple(b"$%d" % n for n in range(_SHORT))


BUSY = object()


class _Unpackable(Exception):
    """An argument pack() leaves to redis-py."""


class HeldScript:
    """A Lua script run with ``EVALSHA`` on one of its own :class:`HeldConnection` (the first
    free one, else through the pool), called as redis-py's ``Script`` is
    (``script(keys=..., args=...)``): no pool checkout per call, loaded again after
    ``NOSCRIPT``. ``connections``: threads that run it at once without the pool (a
    consumer's two fetch lanes). A cluster client runs it through redis-py's ``Script``."""

    def __init__(self, client: object, script: str, connections: int = 2) -> None:
        self.client = client
        self.held = tuple(HeldConnection(client) for _ in range(connections))
        self.script = client.register_script(script)  # type: ignore[attr-defined]

    def close(self) -> None:
        for held in self.held:
            held.close()

    def __call__(self, keys: Sequence[object], args: Sequence[object]) -> Any:
        if self.held[0].pool is None:
            return self.script(keys=keys, args=args)
        command = ("EVALSHA", self.script.sha, len(keys), *keys, *args)
        try:
            return self._run(command)
        except NoScriptError:  # a restarted or flushed server
            self.client.script_load(self.script.script)  # type: ignore[attr-defined]
            return self._run(command)

    def _run(self, command: tuple[object, ...]) -> Any:
        for held in self.held:
            result = held.try_execute(command)
            if result is not BUSY:
                return result
        return self.client.execute_command(*command)  # type: ignore[attr-defined]


_held: weakref.WeakSet[HeldConnection] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for held in list(_held):
        held._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
