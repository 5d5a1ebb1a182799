"""``redis://host:6379/0?mode=reliable|lmove|fast``: queues on Redis lists.

Modes (URL parameter ``mode``):

* ``reliable`` (default): a Lua script moves up to ``max_n`` messages at once from the queue
  into the consumer's in-flight hash; ack deletes them from it. Every consumer refreshes its
  score in the ``consumers`` zset (heartbeat); a consumer silent for longer than the lease
  has its in-flight messages put back by any live consumer (in its heartbeat or fetch).
* ``lmove``: the classic BLMOVE/LMOVE pattern: messages move into a processing list per
  consumer and queue; ack is LREM. Same heartbeat recovery. No priorities.
* ``fast``: plain pop, at-most-once: a message popped by a consumer that dies is lost.

Delays (every mode) live in a zset by due time, moved to the list by fetch (Lua).
Priorities (reliable, fast) use one list per non-zero level. Times are Redis server times.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from typing import TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, AuthorizationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from callq.broker import BrokerBase, Capabilities, Delivery
from callq.errors import BrokerError, ConfigError
from callq.url import BrokerURL

from . import _lua
from .state import SharedStateMixin

log = logging.getLogger("callq.redis")

T = TypeVar("T")

MODES = ("reliable", "lmove", "fast")
KNOWN_PARAMS = ("mode", "prefix", "lease", "retry", "socket_timeout", "block", "connect_timeout")
#: longest single blocking call; a fetch with a longer timeout loops
MAX_BLOCK = 1.0
#: idle wait slice on a queue that holds priority levels (only level 0 can be waited on)
LEVEL_POLL = 0.1
#: values per LPUSH / ids per script call
CHUNK = 1000
#: Redis times out blocked clients on its timer tick (hz 10: every 100 ms), so a blocking call
#: returns up to a tick late; a wait that must end on time blocks until a tick before, then sleeps
REDIS_TICK = 0.1
_TRANSIENT = (RedisConnectionError, RedisTimeoutError, TimeoutError, ConnectionResetError)


def redis_client(url: BrokerURL, *, socket_timeout: float, connect_timeout: float = 5.0) -> redis.Redis:
    """A redis-py client for ``url`` (its own query parameters removed); no hidden retries."""
    if url.scheme not in ("redis", "rediss"):
        raise ConfigError(f"broker URL {url}: scheme must be redis:// or rediss://")
    path = url.path.strip("/")
    try:
        db = int(path) if path else 0
    except ValueError:
        raise ConfigError(f"broker URL {url}: the path must be a database number, got {path!r}") from None
    return redis.Redis(
        host=url.host or "localhost",
        port=url.port or 6379,
        db=db,
        username=url.username,
        password=url.password,
        ssl=url.scheme == "rediss",
        socket_timeout=socket_timeout,
        socket_connect_timeout=min(socket_timeout, connect_timeout),
        socket_keepalive=True,
        # Commands are not retried inside redis-py: a lost reply to a claim must be seen
        # here so the claimed messages can be given back (see _reconcile).
        retry=Retry(ExponentialBackoff(), 0),
        retry_on_error=[],
        health_check_interval=30,
    )


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

    Until the first call succeeded (``connect``), Redis being unreachable fails within
    ``connect_timeout``; a connection lost later is retried for ``retry_for`` seconds.
    """

    def __init__(self, client: redis.Redis, url: BrokerURL, retry_for: float, connect_timeout: float = 5.0) -> None:
        self.client = client
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
        self.client.close()
        self.client.connection_pool.disconnect()

    def call(self, what: str, fn: Callable[[], T], on_error: Callable[[], None] | None = None) -> T:
        try:
            result = fn()
        except (AuthenticationError, AuthorizationError):
            raise  # a wrong password does not heal by retrying
        except _TRANSIENT as exc:
            result = self._retry(what, fn, on_error, exc)
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
                exc = again
                continue
            log.warning("redis %s: %s succeeded again after %d failure(s)", self.url, what, failures)
            return result


class RedisBroker(SharedStateMixin, BrokerBase):
    """Queues on Redis lists; see the module docstring and docs/brokers/redis.md."""

    # Redis keys are binary-safe strings up to 512 MB; the name is part of several keys
    max_queue_name = 10_000
    queue_name_rule = "no control characters"

    def __init__(self, url: BrokerURL) -> None:
        super().__init__(url)
        url.check_params(KNOWN_PARAMS)
        self.mode = url.str_param("mode", "reliable", choices=MODES)
        self.prefix = url.str_param("prefix", "callq")
        if not self.prefix:
            raise ConfigError(f"broker URL {url}: prefix must not be empty")
        lease = url.float_param("lease", 10.0, minimum=1.0)
        self.lease = lease
        self.heartbeat_interval = lease / 5  # type: ignore[misc]  # per instance, from the URL
        # a consumer silent this long is dead; a live one renews every heartbeat_interval
        self.dead_after_ms = int((lease - self.heartbeat_interval) * 1000)
        self.block = url.float_param("block", MAX_BLOCK, minimum=0.01)
        socket_timeout = url.float_param("socket_timeout", 10.0, minimum=0.5)
        if socket_timeout <= self.block + 1:
            raise ConfigError(f"broker URL {url}: socket_timeout must exceed block + 1 second")
        retry_for = url.float_param("retry", 60.0)
        connect_timeout = url.float_param("connect_timeout", 5.0, minimum=0.1)
        self.capabilities = Capabilities(
            acks=self.mode != "fast",
            persistent=False,  # depends on the server's AOF/RDB settings: not claimed
            distributed=True,
            backlog=True,
            native_delay=True,
            priority=self.mode != "lmove",
            exact_size=True,
            shared_state=True,
            redelivery_timeout=lease if self.mode != "fast" else 0.0,
        )
        self.client = redis_client(url, socket_timeout=socket_timeout, connect_timeout=connect_timeout)
        self.rc = RetryingClient(self.client, url, retry_for, connect_timeout)
        self.rc.connect()  # unreachable, wrong password or DB: a clear error now
        self.consumer_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:10]}".replace(":", "-")
        self._claim = self.client.register_script(_lua.CLAIM)
        self._lmove_claim = self.client.register_script(_lua.LMOVE_CLAIM)
        self._publish_delayed = self.client.register_script(_lua.PUBLISH_DELAYED)
        self._requeue = self.client.register_script(_lua.REQUEUE)
        self._lmove_requeue = self.client.register_script(_lua.LMOVE_REQUEUE)
        self._heartbeat = self.client.register_script(_lua.HEARTBEAT)
        self._release = self.client.register_script(_lua.RELEASE)
        self._release_fields = self.client.register_script(_lua.RELEASE_FIELDS)
        self._size = self.client.register_script(_lua.SIZE)
        self._purge = self.client.register_script(_lua.PURGE)
        # What this consumer handed out and not yet acked (to find orphans after a lost reply).
        self._lock = threading.Lock()
        self._held_fields: set[bytes] = set()  # reliable
        self._held_bodies: Counter[tuple[str, bytes]] = Counter()  # lmove
        self._seq = 0
        self._suspect = False  # a claim failed in transit: look for orphans
        self._registered = False  # fetched at least once: heartbeats keep us alive
        self._closed = False

    # --- keys ----------------------------------------------------------------------------

    def _list_key(self, queue: str, level: int = 0) -> str:
        return f"{self.prefix}:q:{queue}" if level == 0 else f"{self.prefix}:qp{level}:{queue}"

    # --- publish -------------------------------------------------------------------------

    def callq_publish(self, queue: str, bodies: Sequence[bytes], delay: float, priority: int | None) -> int:
        if not bodies:
            return 0
        level = int(priority) if priority and self.mode != "lmove" else 0
        if delay > 0:
            delay_ms = max(1, int(delay * 1000))
            for start in range(0, len(bodies), CHUNK):
                chunk = list(bodies[start:start + CHUNK])
                self.rc.call("publish", lambda c=chunk: self._publish_delayed(
                    args=[self.prefix, queue, str(level), delay_ms, *c]))
            return len(bodies)
        if level == 0 and len(bodies) <= CHUNK:
            self.rc.call("publish", partial(self.client.lpush, f"{self.prefix}:q:{queue}", *bodies))
            return len(bodies)
        key = self._list_key(queue, level)

        def send() -> None:
            pipe = self.client.pipeline(transaction=True)
            for start in range(0, len(bodies), CHUNK):
                pipe.lpush(key, *bodies[start:start + CHUNK])
            if level:
                pipe.zadd(f"{self.prefix}:levels:{queue}", {str(level): level})
            pipe.execute()

        self.rc.call("publish", send)
        return len(bodies)

    # --- fetch ---------------------------------------------------------------------------

    def callq_fetch(self, queue: str, max_n: int, timeout: float) -> list[Delivery]:
        if max_n <= 0:
            return []
        deadline = time.monotonic() + timeout
        base = self._list_key(queue)
        while True:
            out, next_due_ms, has_levels = self._take(queue, max_n)
            if out or self._closed:
                return out
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            # the timeout, or the next delayed message's due time: both must be kept to a few ms
            target = remaining if next_due_ms < 0 else min(remaining, next_due_ms / 1000 + 0.001)
            if target <= REDIS_TICK:
                time.sleep(target)
                continue
            wait = min(self.block, target - REDIS_TICK)
            if has_levels:
                wait = min(wait, LEVEL_POLL)
            wait = max(wait, 0.01)  # 0 would block forever
            if self.mode == "lmove":
                proc = f"{self.prefix}:proc:{self.consumer_id}:{queue}"
                body = self.rc.call("fetch", lambda w=wait, p=proc: self.client.blmove(base, p, w, "RIGHT", "LEFT"),
                                    on_error=self._mark_suspect)
                if body == _lua.WAKE.encode():  # a wake-up marker, not a message
                    self.rc.call("fetch", lambda p=proc, b=body: self.client.lrem(p, 1, b))
                    continue
                if body is not None:
                    with self._lock:
                        self._held_bodies[(queue, body)] += 1
                    more = self._take(queue, max_n - 1)[0] if max_n > 1 else []
                    return [Delivery(body, queue, proc), *more]
            else:
                # Wait without taking: rotating the list onto itself (RIGHT to RIGHT) changes
                # nothing but returns as soon as it is non-empty; the claim script then takes.
                self.rc.call("fetch", lambda w=wait: self.client.blmove(base, base, w, "RIGHT", "RIGHT"))

    def _mark_suspect(self) -> None:
        # A claim's reply may have been lost: what it moved is ours but unknown to us.
        self._suspect = True

    def _take(self, queue: str, max_n: int) -> tuple[list[Delivery], int, bool]:
        """One claim round trip: (deliveries, ms until the next delayed message or -1, has levels)."""
        if self.mode == "lmove":
            res = self.rc.call("fetch", lambda: self._lmove_claim(
                args=[self.prefix, queue, self.consumer_id, max_n, self.dead_after_ms]), on_error=self._mark_suspect)
            self._registered = True
            proc = f"{self.prefix}:proc:{self.consumer_id}:{queue}"
            bodies = res[3:]
            if bodies:
                with self._lock:
                    for body in bodies:
                        self._held_bodies[(queue, body)] += 1
            out = [Delivery(body, queue, proc) for body in bodies]
        elif self.mode == "reliable":
            with self._lock:
                seq = self._seq
                self._seq += max_n
            res = self.rc.call("fetch", lambda: self._claim(
                args=[self.prefix, queue, self.consumer_id, max_n, seq, self.dead_after_ms, 1]),
                on_error=self._mark_suspect)
            self._registered = True
            items = res[3:]
            fields = items[0::2]
            if fields:
                with self._lock:
                    self._held_fields.update(fields)
            out = [Delivery(body, queue, field) for field, body in zip(fields, items[1::2], strict=True)]
        else:
            res = self.rc.call("fetch", lambda: self._claim(
                args=[self.prefix, queue, self.consumer_id, max_n, 0, self.dead_after_ms, 0]))
            out = [Delivery(body, queue, None) for body in res[3:]]
        if res[1]:
            log.warning("redis %s: gave back %d message(s) of dead consumers", self.url, res[1])
        if self._suspect:
            self._reconcile()
        return out, int(res[0]), bool(res[2])

    def _reconcile(self) -> None:
        """Give back what our in-flight structures hold but we never handed out (lost replies)."""
        self._suspect = False
        with self._lock:
            if self.mode == "reliable":
                held_f = set(self._held_fields)
            else:
                held_b = Counter(self._held_bodies)
        if self.mode == "reliable":
            h = f"{self.prefix}:inflight:{self.consumer_id}"
            fields = self.rc.call("reconcile", lambda: self.client.hkeys(h))
            orphans = [f for f in fields if f not in held_f]
            n = 0
            for start in range(0, len(orphans), CHUNK):
                chunk = orphans[start:start + CHUNK]
                n += self.rc.call("reconcile", lambda c=chunk: self._release_fields(
                    args=[self.prefix, self.consumer_id, *c]))
        else:
            n = 0
            queues = self.rc.call("reconcile", lambda: self.client.smembers(f"{self.prefix}:procs:{self.consumer_id}"))
            for q in queues:
                queue = q.decode()
                proc = f"{self.prefix}:proc:{self.consumer_id}:{queue}"
                items = Counter(self.rc.call("reconcile", lambda p=proc: self.client.lrange(p, 0, -1)))
                for body, count in items.items():
                    extra = count - held_b.get((queue, body), 0)
                    if extra > 0:
                        n += self.rc.call("reconcile", lambda b=body, k=extra, q=queue: self._lmove_requeue(
                            args=[self.prefix, self.consumer_id, q, 0, *([b] * k)]))
        if n:
            log.warning("redis %s: gave back %d message(s) claimed by a fetch whose reply was lost", self.url, n)

    # --- ack / requeue -------------------------------------------------------------------

    def callq_ack(self, deliveries: Sequence[Delivery]) -> int:
        if self.mode == "fast" or not deliveries:
            return len(deliveries)
        if self.mode == "reliable":
            fields = [d.tag for d in deliveries]
            h = f"{self.prefix}:inflight:{self.consumer_id}"
            for start in range(0, len(fields), CHUNK):
                chunk = fields[start:start + CHUNK]
                self.rc.call("ack", lambda c=chunk: self.client.hdel(h, *c))
            with self._lock:
                self._held_fields.difference_update(fields)
            return len(deliveries)

        def send() -> None:
            pipe = self.client.pipeline(transaction=False)
            for d in deliveries:
                pipe.lrem(d.tag, -1, d.body)
            pipe.execute()

        self.rc.call("ack", send)
        self._forget_bodies(deliveries)
        return len(deliveries)

    def _forget_bodies(self, deliveries: Sequence[Delivery]) -> None:
        with self._lock:
            held = self._held_bodies
            for d in deliveries:
                key = (d.queue, d.body)
                left = held[key] - 1
                if left > 0:
                    held[key] = left
                else:
                    held.pop(key, None)

    def callq_requeue(self, deliveries: Sequence[Delivery], delay: float) -> int:
        if not deliveries:
            return 0
        delay_ms = max(0, int(delay * 1000))
        if self.mode == "fast":  # already gone from Redis: publish again
            by_queue: dict[str, list[bytes]] = {}
            for d in deliveries:
                by_queue.setdefault(d.queue, []).append(d.body)
            for queue, bodies in by_queue.items():
                self.callq_publish(queue, bodies, delay, None)
            return len(deliveries)
        n = 0
        if self.mode == "reliable":
            fields = [d.tag for d in deliveries]
            for start in range(0, len(fields), CHUNK):
                chunk = fields[start:start + CHUNK]
                n += self.rc.call("requeue", lambda c=chunk: self._requeue(
                    args=[self.prefix, self.consumer_id, delay_ms, *c]))
            with self._lock:
                self._held_fields.difference_update(fields)
            return n
        grouped: dict[str, list[bytes]] = {}
        for d in deliveries:
            grouped.setdefault(d.queue, []).append(d.body)
        for queue, bodies in grouped.items():
            for start in range(0, len(bodies), CHUNK):
                chunk = bodies[start:start + CHUNK]
                n += self.rc.call("requeue", lambda q=queue, c=chunk: self._lmove_requeue(
                    args=[self.prefix, self.consumer_id, q, delay_ms, *c]))
        self._forget_bodies(deliveries)
        return n

    # --- heartbeat / size / purge / close -----------------------------------------------

    def callq_heartbeat(self) -> int:
        """Renew this consumer's score; give back the messages of consumers silent too long."""
        if self.mode == "fast":
            return 0
        register = 1 if self._registered and not self._closed else 0
        total = 0
        while True:
            recovered, dead = self.rc.call("heartbeat", lambda: self._heartbeat(
                args=[self.prefix, self.consumer_id, self.dead_after_ms, register]))
            total += int(recovered)
            if int(dead) < 50:
                break
        if total:
            log.warning("redis %s: gave back %d message(s) of dead consumers", self.url, total)
        return total

    def callq_size(self, queue: str) -> int:
        return int(self.rc.call("size", lambda: self._size(args=[self.prefix, queue])))

    def callq_purge(self, queue: str) -> int:
        return int(self.rc.call("purge", lambda: self._purge(args=[self.prefix, queue])))

    def callq_close(self) -> bool:
        if self._closed:
            return True
        self._closed = True
        try:
            if self._registered:
                self.rc.retry_for = min(self.rc.retry_for, 5.0)
                n = self.rc.call("close", lambda: self._release(args=[self.prefix, self.consumer_id]))
                if n:
                    log.info("redis %s: gave back %d unacked message(s) on close", self.url, n)
        except BrokerError as exc:
            log.warning("redis %s: could not give back unacked messages on close (%s); "
                        "live consumers recover them within %.0fs", self.url, exc, self.lease)
        finally:
            self.rc.close()
        return True

    def __repr__(self) -> str:
        return f"RedisBroker({str(self.url)!r}, mode={self.mode!r}, consumer={self.consumer_id!r})"
