"""``nats://host:4222``: callq queues on NATS JetStream (nats-py on one event-loop thread).

A stream per queue (``<prefix>_<queue>``, subject ``<prefix>.<queue>``, work-queue retention,
file storage) with one durable pull consumer ``callq`` that every worker shares. A fetch is a
pull request for at most ``max_n`` messages (bounded prefetch); acks are explicit; the consumer's
``ack_wait`` is the lease and ``in_progress`` (sent by callq's heartbeat for every held message)
extends it; requeue is ``nak`` (with a delay when asked); a message delivered more than
``max_deliveries`` times goes to ``<queue>.dlq``. Bodies larger than the server's
``max_payload`` go to an object store bucket, the message carrying only its name.
Streams, consumers and the coroutines on them are in :mod:`.streams`. See docs/brokers/nats.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg

from callq.broker import BrokerBase, Capabilities, Delivery
from callq.errors import BrokerError, ConfigError
from callq.url import BrokerURL

from . import names
from .deadletter import dead_letter_body
from .large import LargeBodies, object_name
from .loop import LoopThread
from .streams import Streams

log = logging.getLogger("callq.nats")

T = TypeVar("T")

KNOWN_PARAMS = ("prefix", "ack_wait", "max_deliveries", "retry", "connect_timeout", "max_ack_pending", "replicas")
#: longest wait for the loop thread on top of an operation's own timeout
SLACK = 10.0
_TRANSIENT = (nats.errors.TimeoutError, asyncio.TimeoutError, TimeoutError, nats.errors.NoRespondersError,
              nats.js.errors.NoStreamResponseError, nats.js.errors.ServiceUnavailableError,
              nats.errors.ConnectionReconnectingError, nats.errors.OutboundBufferLimitError,
              nats.errors.StaleConnectionError, nats.errors.FlushTimeoutError)


class NatsBroker(BrokerBase):
    """A callq broker on one NATS connection; thread-safe (nats-py runs on a private loop thread)."""

    def __init__(self, url: BrokerURL) -> None:
        super().__init__(url)
        url.check_params(KNOWN_PARAMS)
        if url.scheme != "nats":
            raise ConfigError(f"broker URL {url}: callq-nats handles nats://, not {url.scheme}://")
        if url.path not in ("", "/"):
            raise ConfigError(f"broker URL {url}: no path expected (streams are named after queues)")
        self.prefix = url.str_param("prefix", "callq")
        if not names.PREFIX.match(self.prefix):
            raise ConfigError(f"broker URL {url}: prefix must be 1-32 letters, digits or '-', got {self.prefix!r}")
        self.ack_wait = url.float_param("ack_wait", 30.0, minimum=1.0)
        self.heartbeat_interval = self.ack_wait / 5  # type: ignore[misc]  # per instance, from the URL
        self.max_deliveries = url.int_param("max_deliveries", 0)
        self.retry_for = url.float_param("retry", 60.0)
        self.connect_timeout = url.float_param("connect_timeout", 5.0, minimum=0.5)
        self.max_ack_pending = url.int_param("max_ack_pending", 20000, minimum=1)
        self.replicas = url.int_param("replicas", 1, minimum=1)
        self.capabilities = Capabilities(
            acks=True, persistent=True, distributed=True, backlog=True, native_delay=False, priority=False,
            exact_size=True, shared_state=False, redelivery_timeout=self.ack_wait,
        )
        self.consumer_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._lock = threading.Lock()
        self._held: dict[str, Msg] = {}  # reply subject -> message handed out, not yet settled
        self._closed = False
        self._closing = False
        self._io = LoopThread(f"callq-nats-{id(self):x}")
        try:
            self.nc = self._io.run(self._connect(), self.connect_timeout + 2)
        except BaseException as exc:
            self._io.stop()
            raise BrokerError(f"cannot connect to NATS at {url}: {type(exc).__name__}: {exc}") from None
        self.js = self.nc.jetstream(timeout=5.0)
        self.large = LargeBodies(self.js, self.prefix, self.replicas)
        self.streams = Streams(self.nc, self.js, self.large, url, prefix=self.prefix, ack_wait=self.ack_wait,
                               max_ack_pending=self.max_ack_pending, replicas=self.replicas)

    # --- connection ------------------------------------------------------------------------

    async def _connect(self) -> nats.NATS:
        u = self.url
        server = f"nats://{u.host or '127.0.0.1'}:{u.port or 4222}"
        return await nats.connect(
            servers=[server], user=u.username, password=u.password, name=f"callq-{self.consumer_id}",
            connect_timeout=max(1, round(self.connect_timeout)), allow_reconnect=True,
            max_reconnect_attempts=-1, reconnect_time_wait=0.5, pending_size=64 * 1024 * 1024,
            error_cb=self._on_error, disconnected_cb=self._on_disconnected, reconnected_cb=self._on_reconnected,
        )

    async def _on_error(self, exc: Exception) -> None:
        if not self._closing:
            log.warning("nats %s: %s: %s", self.url, type(exc).__name__, exc)

    async def _on_disconnected(self) -> None:
        if not self._closing:
            log.warning("nats %s: disconnected; reconnecting", self.url)

    async def _on_reconnected(self) -> None:
        log.warning("nats %s: reconnected", self.url)

    def _call(self, what: str, make: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
        """Run a coroutine on the loop; retry transient failures (server away) for ``retry`` seconds."""
        deadline = time.monotonic() + self.retry_for
        wait = 0.1
        while True:
            try:
                return self._io.run(make(), timeout + SLACK)  # type: ignore[arg-type]
            except _TRANSIENT as exc:
                if self._closed or time.monotonic() + wait > deadline:
                    raise BrokerError(f"nats {self.url}: {what} failed: {type(exc).__name__}: {exc}") from exc
                log.warning("nats %s: %s failed (%s); retrying in %.1fs", self.url, what, type(exc).__name__, wait)
                time.sleep(wait)
                wait = min(wait * 2, 2.0)
            except nats.errors.Error as exc:
                raise BrokerError(f"nats {self.url}: {what} failed: {type(exc).__name__}: {exc}") from exc

    # --- publish ---------------------------------------------------------------------------

    def callq_publish(self, queue: str, bodies: Sequence[bytes], delay: float, priority: int | None) -> int:
        if not bodies:
            return 0
        # message ids make a retried publish idempotent (JetStream's duplicate window)
        items = [(uuid.uuid4().hex, bytes(b)) for b in bodies]
        for start in range(0, len(items), 1000):
            chunk = items[start:start + 1000]
            self._call(f"publish to {queue}", lambda c=chunk: self.streams.publish(queue, c))
        return len(bodies)

    # --- fetch -----------------------------------------------------------------------------

    def callq_fetch(self, queue: str, max_n: int, timeout: float) -> list[Delivery]:
        if max_n <= 0 or self._closed:
            return []
        msgs = self._call(f"fetch from {queue}", lambda: self.streams.fetch(queue, max_n, timeout), timeout)
        out: list[Delivery] = []
        for msg in msgs:
            delivered = msg.metadata.num_delivered
            if self.max_deliveries and delivered > self.max_deliveries:
                self._dead_letter(queue, msg, delivered)
                continue
            body = msg.data
            name = object_name(msg.headers)
            if name is not None:
                body = self._call("load a large body", lambda n=name: self.large.load(queue, n))
                if body is None:
                    log.error("nats %s: the large body %s of a message on %s is gone (queue purged?)",
                              self.url, name, queue)
                    self._dead_letter(queue, msg, delivered, reason="large body missing")
                    continue
            with self._lock:
                self._held[msg.reply] = msg
            out.append(Delivery(body, queue, msg, delivered > 1))
        return out

    def _dead_letter(self, queue: str, msg: Msg, delivered: int, reason: str = "") -> None:
        reason = reason or f"delivered {delivered} times (max_deliveries={self.max_deliveries})"
        log.error("nats %s: message on %s %s; sent to %s.dlq", self.url, queue, reason, queue)
        self.callq_publish(f"{queue}.dlq", [dead_letter_body(msg.data, queue, reason)], 0.0, None)
        self._settle("dead-letter", [msg], lambda m: m.ack())

    # --- ack / requeue / heartbeat ---------------------------------------------------------

    def _settle(self, what: str, msgs: list[Msg], action: Callable[[Msg], Awaitable[None]]) -> int:
        async def run() -> None:
            for m in msgs:
                await action(m)
            await self.nc.flush(timeout=5)

        try:
            self._io.run(run(), 5 + SLACK)
        except (*_TRANSIENT, nats.errors.Error) as exc:
            # the server redelivers what it did not hear about after ack_wait: at-least-once holds
            log.warning("nats %s: %s of %d message(s) not confirmed (%s)", self.url, what, len(msgs), exc)
        return len(msgs)

    def _release(self, deliveries: Sequence[Delivery]) -> list[Msg]:
        with self._lock:
            for d in deliveries:
                self._held.pop(d.tag.reply, None)
        return [d.tag for d in deliveries]

    def callq_ack(self, deliveries: Sequence[Delivery]) -> int:
        if not deliveries:
            return 0
        msgs = self._release(deliveries)
        self._settle("ack", msgs, lambda m: m.ack())
        for d, m in zip(deliveries, msgs):
            name = object_name(m.headers)
            if name is not None:
                try:
                    self._call("delete a large body", lambda q=d.queue, n=name: self.large.delete(q, n))
                except BrokerError as exc:
                    log.warning("nats %s: could not delete large body %s: %s", self.url, name, exc)
        return len(deliveries)

    def callq_requeue(self, deliveries: Sequence[Delivery], delay: float) -> int:
        if not deliveries:
            return 0
        msgs = self._release(deliveries)
        wait = delay if delay > 0 else None
        return self._settle("requeue", msgs, lambda m: m.nak(delay=wait))

    def callq_heartbeat(self) -> int:
        """Tell the server every held message is still being worked on (resets its ack_wait)."""
        with self._lock:
            msgs = list(self._held.values())
        if msgs and not self._closed:
            self._settle("in_progress", msgs, lambda m: m.in_progress())
        return 0  # the server itself redelivers a dead consumer's messages after ack_wait

    # --- size / purge / close --------------------------------------------------------------

    def callq_size(self, queue: str) -> int:
        return self._call(f"size of {queue}", lambda: self.streams.size(queue))

    def callq_purge(self, queue: str) -> int:
        return self._call(f"purge of {queue}", lambda: self.streams.purge(queue))

    def callq_close(self) -> bool:
        if self._closed:
            return True
        with self._lock:
            held = list(self._held.values())
            self._held.clear()
        self._closing = True

        async def close() -> None:
            leftovers = self.streams.take_all_leftovers()  # delivered to us after a fetch returned: give back too
            for m in held + leftovers:
                try:
                    await m.nak()
                except nats.errors.Error:
                    pass
            try:
                await self.nc.flush(timeout=2)
            except (*_TRANSIENT, nats.errors.Error):
                pass
            await self.nc.close()

        try:
            self._io.run(close(), 5 + SLACK)
        except BaseException as exc:  # noqa: BLE001 - closing must not raise
            log.warning("nats %s: close did not finish cleanly (%s); unacked messages come back after "
                        "ack_wait (%.0fs)", self.url, exc, self.ack_wait)
        finally:
            self._closed = True
            self._io.stop()
        return True

    def __repr__(self) -> str:
        return f"NatsBroker({str(self.url)!r}, consumer={self.consumer_id!r})"
