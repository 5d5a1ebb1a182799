"""``amqp://user:pass@host:5672/vhost``: callq queues on RabbitMQ (pika, one I/O thread per connection).

Each broker instance owns one AMQP connection driven by a private thread running pika's
``SelectConnection`` I/O loop. Nothing else touches pika objects: other threads queue
operations (publish, subscribe, ack, nack, purge, ...) and wait on a future the I/O thread
completes. Two channels per connection:

* the *publish* channel, in confirm mode: queue declarations and publishes. A publish returns
  when RabbitMQ confirmed every message (persistent, ``delivery_mode=2``, durable queue).
* the *consume* channel: one consumer (``basic_consume``) per fetched queue, each with its own
  ``basic_qos`` prefetch, acks and nacks. Deliveries wait in a local buffer until ``fetch``
  takes them.

Prefetch is bounded by what the caller asks for: the consumer's prefetch is
``min(prefetch_count, max_n + deliveries fetched but not yet acked)``, raised (by
re-subscribing) only when a fetch asks for more, so a worker never holds more unacked
messages than its concurrency plus its buffer.

Delays need no server plugin: a delayed message goes to ``<queue>.delay.<ms>``, a queue with
``x-message-ttl=<ms>`` that dead-letters into ``<queue>`` through the default exchange and
deletes itself (``x-expires``) when unused.

Reconnect: when the connection drops, the I/O thread reconnects with backoff, re-subscribes
every queue it consumed and bumps a generation number. Deliveries of the dead channel are
dropped from the buffer and their acks are ignored: RabbitMQ redelivers them.
"""

from __future__ import annotations

import functools
import logging
import math
import ssl
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import pika
import pika.exceptions

from callq.broker import BrokerBase, Capabilities, Delivery
from callq.errors import BrokerError, ConfigError
from callq.url import BrokerURL

log = logging.getLogger("callq.rabbitmq")

KNOWN_PARAMS = ("prefetch_count", "max_priority", "heartbeat", "connect_timeout", "publish_timeout",
                "queue_expires", "tls_verify", "queue_type", "delivery_limit", "hosts")
QUEUE_TYPES = ("classic", "quorum")
#: a delay queue is declared again (renewing its x-expires lease) when its last declaration is older
DELAY_REDECLARE = 30.0
#: a delay queue lives this long (ms) past its TTL after its last declaration
DELAY_QUEUE_SLACK_MS = 60_000
#: most time an ack or nack waits for the I/O thread before the caller moves on
ACK_WAIT = 10.0


def delay_ms(seconds: float) -> int:
    """Round a delay up to a bucket (10 ms below 10 s, 100 ms below 100 s, 1 s above) so few delay queues exist."""
    ms = max(1, math.ceil(seconds * 1000))
    step = 10 if ms < 10_000 else 100 if ms < 100_000 else 1000
    return -(-ms // step) * step


def delay_queue_name(queue: str, ms: int) -> str:
    return f"{queue}.delay.{ms}"


class _Batch:
    """Messages of one publish call waiting for their confirms."""

    __slots__ = ("future", "remaining", "nacked", "count")

    def __init__(self, future: Future[int], count: int) -> None:
        self.future = future
        self.remaining = count
        self.count = count
        self.nacked = 0


class RabbitmqBroker(BrokerBase):
    """A callq broker on one RabbitMQ connection (thread-safe; pika runs on its own thread)."""

    heartbeat_interval = 30.0  # callq's heartbeat has nothing to do here: RabbitMQ tracks consumers

    def __init__(self, url: BrokerURL) -> None:
        super().__init__(url)
        url.check_params(KNOWN_PARAMS)
        if url.scheme not in ("amqp", "amqps"):
            raise ConfigError(f"broker URL {url}: callq-rabbitmq handles amqp:// and amqps://, not {url.scheme}://")
        self.prefetch_count = url.int_param("prefetch_count", 100, minimum=1)
        if self.prefetch_count > 65535:
            raise ConfigError(f"broker URL {url}: prefetch_count must be <= 65535")
        self.queue_type = url.str_param("queue_type", "classic", choices=QUEUE_TYPES)
        self.delivery_limit = url.int_param("delivery_limit", 0, minimum=0)
        quorum = self.queue_type == "quorum"
        if self.delivery_limit and not quorum:
            raise ConfigError(f"broker URL {url}: delivery_limit needs queue_type=quorum")
        if quorum and url.int_param("max_priority", 0) > 0:
            raise ConfigError(f"broker URL {url}: quorum queues have no x-max-priority; drop max_priority")
        self.max_priority = url.int_param("max_priority", 0 if quorum else 10, minimum=0)
        if self.max_priority > 255:
            raise ConfigError(f"broker URL {url}: max_priority must be <= 255 (RabbitMQ recommends <= 10)")
        heartbeat = url.int_param("heartbeat", 30, minimum=0)
        self.connect_timeout = url.float_param("connect_timeout", 10.0, minimum=0.1)
        self.publish_timeout = url.float_param("publish_timeout", 30.0, minimum=0.1)
        expires = url.float_param("queue_expires", 0.0, minimum=0.0)
        self.queue_expires_ms = int(expires * 1000)
        self._params_list = [self._connection_parameters(url, heartbeat, host, port)
                             for host, port in _hosts(url)]
        self._params = self._params_list[0]
        self._next_host = 0
        self.capabilities = Capabilities(
            acks=True, persistent=True, distributed=True, backlog=True, native_delay=True,
            priority=self.max_priority > 0, exact_size=True,
            # a killed consumer's TCP connection closes at once; a vanished host is noticed
            # after missed AMQP heartbeats
            redelivery_timeout=float(2 * heartbeat if heartbeat else 60),
        )

        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._ops: deque[tuple[Future[Any], Callable[[Future[Any]], None]]] = deque()
        self._buffers: dict[str, deque[Delivery]] = {}
        self._outstanding: dict[str, int] = {}
        self._subs: dict[str, int] = {}  # queue -> wanted prefetch (consumers to keep)
        self._delay_queues: dict[str, set[str]] = {}  # queue -> delay queues this instance used
        self._closing = False
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._loop_live = False
        self._gen = 0
        self._first_error: BaseException | None = None
        self._startup = threading.Event()  # set when first ready, or on a refusal that retrying cannot fix

        # I/O-thread state
        self._conn: pika.SelectConnection | None = None
        self._pch: Any = None
        self._cch: Any = None
        self._pub_seq = 0
        self._unconfirmed: OrderedDict[int, _Batch] = OrderedDict()
        self._declared: dict[str, float] = {}
        self._consumer_tags: dict[str, str] = {}
        self._waiting_on: dict[str, set[Future[Any]]] = {"pub": set(), "consume": set()}

        self._thread = threading.Thread(target=self._io_main, name=f"callq-rabbitmq-io-{id(self):x}", daemon=True)
        self._thread.start()
        self._startup.wait(self.connect_timeout + 1)
        if not self._ready.is_set():
            self._closing = True
            self._stop.set()
            err = self._first_error
            raise BrokerError(f"cannot connect to RabbitMQ at {url}: {err or 'timed out'}")

    # --- URL --------------------------------------------------------------------------------------

    def _connection_parameters(self, url: BrokerURL, heartbeat: int, host: str | None,
                               port: int | None) -> pika.ConnectionParameters:
        tls = url.scheme == "amqps"
        vhost = url.path[1:] if url.path.startswith("/") else url.path
        kwargs: dict[str, Any] = {
            "host": host or "localhost",
            "port": port or (5671 if tls else 5672),
            "virtual_host": vhost or "/",
            "credentials": pika.PlainCredentials(url.username or "guest", url.password or "guest"),
            "heartbeat": heartbeat,
            "blocked_connection_timeout": None,
            "socket_timeout": self.connect_timeout,
            "stack_timeout": self.connect_timeout,
            "connection_attempts": 1,
        }
        if tls:
            context = ssl.create_default_context()
            if not url.bool_param("tls_verify", True):
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            kwargs["ssl_options"] = pika.SSLOptions(context, host)
        elif "tls_verify" in url.query:
            raise ConfigError(f"broker URL {url}: tls_verify applies to amqps:// only")
        return pika.ConnectionParameters(**kwargs)

    def _queue_arguments(self, queue: str) -> dict[str, Any]:
        args: dict[str, Any] = {}
        if self.queue_type == "quorum":
            args["x-queue-type"] = "quorum"
            if self.delivery_limit and not queue.endswith(".dlq"):
                # poison guard: returned more than delivery_limit times -> RabbitMQ moves it to <queue>.dlq
                args["x-delivery-limit"] = self.delivery_limit
                args["x-dead-letter-exchange"] = ""
                args["x-dead-letter-routing-key"] = f"{queue}.dlq"
        if self.max_priority:
            args["x-max-priority"] = self.max_priority
        if self.queue_expires_ms:
            args["x-expires"] = self.queue_expires_ms
        return args

    def _declarations(self, queue: str) -> list[tuple[str, dict[str, Any]]]:
        """The queue, and its dead-letter queue first when RabbitMQ dead-letters into it."""
        names = [(queue, self._queue_arguments(queue))]
        if self.delivery_limit and not queue.endswith(".dlq"):
            names.insert(0, (f"{queue}.dlq", self._queue_arguments(f"{queue}.dlq")))
        return names

    # --- the I/O thread ---------------------------------------------------------------------------

    def _io_main(self) -> None:
        backoff = 0.2
        while not self._closing:
            self._params = self._params_list[self._next_host % len(self._params_list)]
            try:
                conn = pika.SelectConnection(self._params, on_open_callback=self._on_open,
                                             on_open_error_callback=self._on_open_error,
                                             on_close_callback=self._on_closed)
            except Exception as exc:  # noqa: BLE001 - bad parameters or resolver errors; retried
                self._first_error = self._first_error or exc
                log.warning("RabbitMQ connection to %s failed (%s); retrying in %.1fs", self.url, exc, backoff)
                self._next_host += 1
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self._conn = conn
            with self._lock:
                self._loop_live = True
            try:
                conn.ioloop.start()
            except Exception:  # noqa: BLE001 - keep the thread alive; reconnect below
                log.exception("RabbitMQ I/O loop of %s failed", self.url)
            was_ready = self._ready.is_set()
            with self._lock:
                self._loop_live = False
                self._ready.clear()
            self._connection_lost(BrokerError(f"connection to RabbitMQ at {self.url} lost"))
            try:
                conn.ioloop.close()
            except Exception:  # noqa: BLE001
                pass
            if self._closing:
                break
            if was_ready:
                backoff = 0.2
            if len(self._params_list) > 1:  # try the next node of the cluster
                self._next_host += 1
            log.warning("RabbitMQ connection to %s:%s lost; reconnecting in %.1fs",
                        self._params.host, self._params.port, backoff)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)
        # closed: fail whatever is still queued
        with self._lock:
            ops = list(self._ops)
            self._ops.clear()
        for fut, _ in ops:
            if not fut.done():
                fut.set_exception(BrokerError(f"RabbitMQ connection {self.url} is closed"))

    def _on_open(self, conn: pika.SelectConnection) -> None:
        if self._closing:
            conn.close()
            return
        conn.channel(on_open_callback=self._on_pub_channel)

    def _on_open_error(self, conn: pika.SelectConnection, exc: BaseException) -> None:
        self._first_error = self._first_error or exc
        if isinstance(exc, (pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError,
                            pika.exceptions.ProbableAccessDeniedError)):
            self._startup.set()  # wrong credentials or vhost: fail the constructor now
        log.debug("RabbitMQ connection to %s failed: %r", self.url, exc)
        conn.ioloop.stop()

    def _on_closed(self, conn: pika.SelectConnection, exc: BaseException) -> None:
        if not self._closing:
            log.warning("RabbitMQ connection to %s closed: %r", self.url, exc)
        conn.ioloop.stop()

    def _on_pub_channel(self, ch: Any) -> None:
        self._pch = ch
        ch.add_on_close_callback(self._on_pub_channel_closed)
        ch.confirm_delivery(self._on_confirm, callback=lambda _frame: self._pub_ready())

    def _pub_ready(self) -> None:
        self._pub_seq = 0
        if self._cch is None or not self._cch.is_open:
            assert self._conn is not None
            self._conn.channel(on_open_callback=self._on_consume_channel)
        else:
            self._run_ops()

    def _on_consume_channel(self, ch: Any) -> None:
        self._cch = ch
        ch.add_on_close_callback(self._on_consume_channel_closed)
        ch.add_on_cancel_callback(self._on_consumer_cancelled)
        with self._lock:
            self._gen += 1
            subs = dict(self._subs)
        self._consumer_tags.clear()
        for queue, qos in subs.items():
            self._subscribe(queue, qos, None)
        self._ready.set()
        self._startup.set()
        self._run_ops()

    def _on_pub_channel_closed(self, ch: Any, reason: BaseException) -> None:
        if ch is not self._pch:
            return
        self._pch = None
        err = _channel_error(reason, self.url)
        self._fail_waiting("pub", err)
        self._fail_unconfirmed(err)
        self._declared.clear()
        if self._closing or self._conn is None or not self._conn.is_open:
            return
        log.warning("RabbitMQ publish channel closed: %s; reopening", reason)
        self._conn.channel(on_open_callback=self._on_pub_channel)

    def _on_consume_channel_closed(self, ch: Any, reason: BaseException) -> None:
        if ch is not self._cch:
            return
        self._cch = None
        self._drop_buffers()
        self._fail_waiting("consume", _channel_error(reason, self.url))
        if self._closing or self._conn is None or not self._conn.is_open:
            return
        log.warning("RabbitMQ consume channel closed: %s; reopening and re-subscribing", reason)
        self._conn.channel(on_open_callback=self._on_consume_channel)

    def _on_consumer_cancelled(self, frame: Any) -> None:
        # the server cancelled a consumer (its queue was deleted): forget it; the next fetch re-subscribes
        tag = frame.method.consumer_tag
        for queue, t in list(self._consumer_tags.items()):
            if t == tag:
                del self._consumer_tags[queue]
                self._declared.pop(queue, None)
                with self._lock:
                    self._subs.pop(queue, None)
                log.warning("RabbitMQ cancelled the consumer of %s (queue deleted?)", queue)

    def _connection_lost(self, err: BaseException) -> None:
        self._pch = self._cch = None
        self._drop_buffers()
        for kind in self._waiting_on:
            self._fail_waiting(kind, err)
        self._fail_unconfirmed(err)
        self._declared.clear()
        self._consumer_tags.clear()

    def _drop_buffers(self) -> None:
        with self._lock:
            self._buffers.clear()
            self._outstanding.clear()

    def _fail_waiting(self, kind: str, err: BaseException) -> None:
        waiting = self._waiting_on[kind]
        for fut in list(waiting):
            if not fut.done():
                fut.set_exception(err)
        waiting.clear()

    def _fail_unconfirmed(self, err: BaseException) -> None:
        batches = {id(b): b for b in self._unconfirmed.values()}
        self._unconfirmed.clear()
        for batch in batches.values():
            if not batch.future.done():
                batch.future.set_exception(err)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        nack = isinstance(method, pika.spec.Basic.Nack)
        tag = method.delivery_tag
        pending = self._unconfirmed
        if method.multiple:
            while pending:
                seq = next(iter(pending))
                if seq > tag:
                    break
                self._confirmed(pending.popitem(last=False)[1], nack)
        else:
            batch = pending.pop(tag, None)
            if batch is not None:
                self._confirmed(batch, nack)

    @staticmethod
    def _confirmed(batch: _Batch, nack: bool) -> None:
        batch.remaining -= 1
        if nack:
            batch.nacked += 1
        if batch.remaining == 0 and not batch.future.done():
            if batch.nacked:
                batch.future.set_exception(BrokerError(f"RabbitMQ refused {batch.nacked} of {batch.count} message(s)"))
            else:
                batch.future.set_result(batch.count)

    def _run_ops(self) -> None:
        """Run queued operations (I/O thread, only while both channels are open)."""
        if not self._ready.is_set() or self._pch is None or self._cch is None:
            return
        while True:
            with self._lock:
                if not self._ops:
                    return
                fut, op = self._ops.popleft()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                op(fut)
            except Exception as exc:  # noqa: BLE001 - reported to the caller
                if not fut.done():
                    fut.set_exception(exc)

    def _wake(self) -> None:
        """Ask the I/O thread to run queued operations (any thread)."""
        with self._lock:
            if not self._loop_live or self._conn is None:
                return
            try:
                self._conn.ioloop.add_callback_threadsafe(self._run_ops)
            except Exception:  # noqa: BLE001 - the loop is going away; ops run after reconnect
                pass

    def _submit(self, op: Callable[[Future[Any]], None]) -> Future[Any]:
        fut: Future[Any] = Future()
        with self._lock:
            if self._closing:
                raise BrokerError(f"RabbitMQ connection {self.url} is closed")
            self._ops.append((fut, op))
        self._wake()
        return fut

    def _call(self, op: Callable[[Future[Any]], None], timeout: float, what: str) -> Any:
        fut = self._submit(op)
        try:
            return fut.result(timeout)
        except FutureTimeout:
            if fut.cancel():
                raise BrokerError(f"{what} on {self.url}: not connected to RabbitMQ within {timeout:.0f}s") from None
            try:  # running: its outcome comes soon (confirms or connection loss)
                return fut.result(timeout)
            except FutureTimeout:
                raise BrokerError(f"{what} on {self.url}: no answer from RabbitMQ within {2 * timeout:.0f}s") from None
        except CancelledError:  # pragma: no cover - only we cancel
            raise BrokerError(f"{what} on {self.url} cancelled") from None

    # --- operations run on the I/O thread ------------------------------------------------------

    def _declare(self, names: list[tuple[str, dict[str, Any]]], fut: Future[Any], then: Callable[[], None]) -> None:
        now = time.monotonic()
        todo = [(n, a) for n, a in names
                if n not in self._declared or ("x-message-ttl" in a and now - self._declared[n] > DELAY_REDECLARE)]
        if not todo:
            then()
            return
        waiting = self._waiting_on["pub"]
        waiting.add(fut)

        def step(i: int, _frame: Any = None) -> None:
            if fut.done():
                return
            if i > 0:
                self._declared[todo[i - 1][0]] = time.monotonic()
            if i == len(todo):
                waiting.discard(fut)
                then()
                return
            name, args = todo[i]
            self._pch.queue_declare(name, durable=True, arguments=args or None,
                                    callback=functools.partial(step, i + 1))

        step(0)

    def _op_publish(self, queue: str, bodies: Sequence[bytes], delay: float, priority: int | None,
                    fut: Future[Any]) -> None:
        names = self._declarations(queue)
        target = queue
        if delay > 0:
            ms = delay_ms(delay)
            target = delay_queue_name(queue, ms)
            delay_args: dict[str, Any] = {
                "x-message-ttl": ms, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": queue,
                "x-expires": ms + DELAY_QUEUE_SLACK_MS,
            }
            if self.queue_type == "quorum":  # replicated like the queue it feeds
                delay_args["x-queue-type"] = "quorum"
            names.append((target, delay_args))
            with self._lock:
                self._delay_queues.setdefault(queue, set()).add(target)
        props = pika.BasicProperties(delivery_mode=2,
                                     priority=max(0, min(priority, 255)) if priority else None)

        def send() -> None:
            if not bodies:
                fut.set_result(0)
                return
            batch = _Batch(fut, len(bodies))
            publish = self._pch.basic_publish
            for body in bodies:
                publish("", target, body, props)
                self._pub_seq += 1
                self._unconfirmed[self._pub_seq] = batch

        self._declare(names, fut, send)

    def _subscribe(self, queue: str, qos: int, fut: Future[Any] | None) -> None:
        """(Re)start the consumer of ``queue`` with prefetch ``qos``."""
        gen = self._gen
        ch = self._cch

        def consume() -> None:
            if ch is not self._cch or gen != self._gen:
                if fut is not None and not fut.done():
                    fut.set_exception(BrokerError("consume channel closed while subscribing"))
                return
            old = self._consumer_tags.pop(queue, None)
            if old:
                ch.basic_cancel(old, callback=lambda _f: None)  # deliveries already here stay ours; in-flight ones are requeued
            ch.basic_qos(prefetch_count=qos)
            on_message = functools.partial(self._on_message, ch, gen, queue)
            if fut is not None:
                self._waiting_on["consume"].add(fut)

            def ok(_frame: Any) -> None:
                if fut is not None:
                    self._waiting_on["consume"].discard(fut)
                    if not fut.done():
                        fut.set_result(True)

            self._consumer_tags[queue] = ch.basic_consume(queue, on_message, callback=ok)

        holder: Future[Any] = fut if fut is not None else Future()
        if fut is None:
            holder.add_done_callback(_log_failure(f"re-subscribing to {queue}"))
        self._declare(self._declarations(queue), holder, consume)

    def _on_message(self, ch: Any, gen: int, queue: str, _ch: Any, method: Any, props: Any, body: bytes) -> None:
        if ch is not self._cch:
            return
        d = Delivery(body, queue, (gen, method.delivery_tag, props.priority), bool(method.redelivered))
        with self._lock:
            buf = self._buffers.get(queue)
            if buf is None:
                buf = self._buffers[queue] = deque()
            buf.append(d)
            self._cond.notify_all()

    def _op_settle(self, deliveries: Sequence[Delivery], requeue: bool, fut: Future[Any]) -> None:
        ch, gen = self._cch, self._gen
        n = 0
        for d in deliveries:
            dgen, tag, _ = d.tag
            if dgen != gen:
                continue  # from a dead channel: RabbitMQ redelivers it anyway
            if requeue:
                ch.basic_nack(tag, requeue=True)
            else:
                ch.basic_ack(tag)
            n += 1
        fut.set_result(n)

    def _op_delayed_requeue(self, deliveries: Sequence[Delivery], delay: float, fut: Future[Any]) -> None:
        gen = self._gen
        live = [d for d in deliveries if d.tag[0] == gen]
        if not live:
            fut.set_result(0)
            return
        by_key: dict[tuple[str, int | None], list[Delivery]] = {}
        for d in live:
            by_key.setdefault((d.queue, d.tag[2]), []).append(d)
        pending = [len(by_key)]

        def published(group: list[Delivery], f: Future[Any]) -> None:
            # runs on the I/O thread (confirm callback or channel close)
            if f.exception() is None and self._gen == gen and self._cch is not None:
                for d in group:
                    self._cch.basic_ack(d.tag[1])
            pending[0] -= 1
            if fut.done():
                return
            if f.exception() is not None:
                fut.set_exception(f.exception())  # type: ignore[arg-type]
            elif pending[0] == 0:
                fut.set_result(len(live))

        for (queue, priority), group in by_key.items():
            f: Future[Any] = Future()
            f.add_done_callback(functools.partial(published, group))
            self._op_publish(queue, [d.body for d in group], delay, priority, f)

    def _op_temp_channel(self, action: Callable[[Any, Future[Any]], None], fut: Future[Any]) -> None:
        """Run ``action`` on a short-lived channel: 404 (no such queue) answers 0, not an error."""
        assert self._conn is not None

        def closed(_ch: Any, reason: BaseException) -> None:
            if fut.done():
                return
            if isinstance(reason, pika.exceptions.ChannelClosedByBroker) and reason.reply_code == 404:
                fut.set_result(0)
            else:
                fut.set_exception(_channel_error(reason, self.url))

        def opened(ch: Any) -> None:
            ch.add_on_close_callback(closed)

            def done(result: Any) -> None:
                if not fut.done():
                    fut.set_result(result)
                if ch.is_open:
                    ch.close()

            action(ch, done)  # type: ignore[arg-type]

        self._conn.channel(on_open_callback=opened)

    def _do_close(self) -> None:
        self._run_ops()  # acks queued before close go out first
        conn = self._conn
        if conn is None:
            return
        try:
            if conn.is_open:
                conn.close()  # unacked deliveries go back to their queues
            elif conn.is_closed:
                conn.ioloop.stop()
            else:
                conn.close()
        except Exception:  # noqa: BLE001 - opening or closing already: just stop the loop
            conn.ioloop.stop()

    # --- the broker hooks --------------------------------------------------------------------------

    def callq_publish(self, queue: str, bodies: Sequence[bytes], delay: float, priority: int | None) -> int:
        bodies = list(bodies)
        if not bodies:
            return 0
        return int(self._call(functools.partial(self._op_publish, queue, bodies, delay, priority),
                              self.publish_timeout, f"publish to {queue}"))

    def callq_fetch(self, queue: str, max_n: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        with self._lock:
            want = min(self.prefetch_count, max(1, max_n) + self._outstanding.get(queue, 0))
            before = self._subs.get(queue, 0)
            grow = want > before
            if grow:
                self._subs[queue] = want
        if grow and self._ready.is_set():
            try:
                self._call(functools.partial(self._subscribe, queue, want), self.connect_timeout,
                           f"subscribe to {queue}")
            except BrokerError:
                with self._lock:
                    if self._subs.get(queue) == want:
                        if before:
                            self._subs[queue] = before
                        else:
                            del self._subs[queue]
                raise
        with self._cond:
            while True:
                buf = self._buffers.get(queue)
                if buf:
                    n = min(max_n, len(buf))
                    out = [buf.popleft() for _ in range(n)]
                    self._outstanding[queue] = self._outstanding.get(queue, 0) + n
                    return out
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closing:
                    return []
                self._cond.wait(remaining)

    def _forget_outstanding(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        gen = self._gen
        live = [d for d in deliveries if d.tag[0] == gen]
        with self._lock:
            for d in live:
                left = self._outstanding.get(d.queue, 0) - 1
                self._outstanding[d.queue] = max(0, left)
        return live

    def _settle(self, deliveries: Sequence[Delivery], requeue: bool) -> int:
        live = self._forget_outstanding(deliveries)
        if not live or not self._ready.is_set():
            return len(deliveries)  # their channel is gone: RabbitMQ redelivers them
        try:
            fut = self._submit(functools.partial(self._op_settle, live, requeue))
            fut.result(ACK_WAIT)
        except (BrokerError, FutureTimeout, CancelledError):
            log.debug("%s of %d deliveries not sent (connection lost); RabbitMQ redelivers them",
                      "nack" if requeue else "ack", len(live))
        return len(deliveries)

    def callq_ack(self, deliveries: Sequence[Delivery]) -> int:
        return self._settle(deliveries, requeue=False)

    def callq_requeue(self, deliveries: Sequence[Delivery], delay: float) -> int:
        if delay <= 0:
            return self._settle(deliveries, requeue=True)
        live = self._forget_outstanding(deliveries)
        if not live or not self._ready.is_set():
            return len(deliveries)
        return int(self._call(functools.partial(self._op_delayed_requeue, live, delay),
                              self.publish_timeout, "delayed requeue"))

    def callq_heartbeat(self) -> int:
        return 0  # RabbitMQ returns a dead consumer's unacked messages itself

    def _temp(self, action: Callable[[Any, Callable[[Any], None]], None], what: str) -> int:
        return int(self._call(functools.partial(self._op_temp_channel, action), self.publish_timeout, what))

    def callq_size(self, queue: str) -> int:
        def passive(ch: Any, done: Callable[[Any], None]) -> None:
            ch.queue_declare(queue, passive=True, callback=lambda f: done(f.method.message_count))

        return self._temp(passive, f"size of {queue}")

    def callq_purge(self, queue: str) -> int:
        def purge(name: str) -> Callable[[Any, Callable[[Any], None]], None]:
            def action(ch: Any, done: Callable[[Any], None]) -> None:
                ch.queue_purge(name, callback=lambda f: done(f.method.message_count))
            return action

        with self._lock:
            names = [queue, *sorted(self._delay_queues.get(queue, ()))]
        return sum(self._temp(purge(name), f"purge of {name}") for name in names)

    def callq_close(self) -> bool:
        with self._lock:
            if self._closing:
                return True
            self._closing = True
            self._cond.notify_all()
            live = self._loop_live and self._conn is not None
            if live:
                try:
                    self._conn.ioloop.add_callback_threadsafe(self._do_close)  # type: ignore[union-attr]
                except Exception:  # noqa: BLE001
                    pass
        self._stop.set()
        self._thread.join(self.connect_timeout + 5)
        if self._thread.is_alive():
            log.warning("RabbitMQ I/O thread of %s did not stop", self.url)
        return True


def _hosts(url: BrokerURL) -> list[tuple[str | None, int | None]]:
    """The URL's host, then the ``hosts`` parameter's (other nodes of a cluster, tried in turn)."""
    out: list[tuple[str | None, int | None]] = [(url.host, url.port)]
    for item in url.query.get("hosts", "").split(","):
        item = item.strip()
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"broker URL {url}: hosts must be host:port,host:port,... got {item!r}")
        out.append((host.strip("[]"), int(port)))
    return out


def _channel_error(reason: BaseException, url: BrokerURL) -> BaseException:
    if isinstance(reason, pika.exceptions.ChannelClosedByBroker):
        if reason.reply_code == 406:
            return ConfigError(
                f"RabbitMQ refused an operation on {url}: {reason.reply_text}. A queue's arguments are fixed when "
                "it is created: use the same queue_type, delivery_limit, max_priority and queue_expires as "
                "whoever declared it, "
                "or delete the queue")
        return BrokerError(f"RabbitMQ closed the channel on {url}: {reason.reply_code} {reason.reply_text}")
    return BrokerError(f"RabbitMQ channel on {url} closed: {reason!r}")


def _log_failure(what: str) -> Callable[[Future[Any]], None]:
    def check(fut: Future[Any]) -> None:
        if fut.exception() is not None:
            log.warning("%s failed: %s", what, fut.exception())
    return check
