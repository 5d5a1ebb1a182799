"""``amqp://user:pass@host:5672/vhost``: callq queues on RabbitMQ (pika, one I/O thread per connection).

Each broker instance owns one AMQP connection driven by a private thread running pika's
``SelectConnection`` I/O loop (``io_thread``). Nothing else touches pika objects: other threads
queue operations (publish, subscribe, ack, nack, purge, ...) and wait on a future the I/O thread
completes. Two channels per connection:

* the *publish* channel (``publish_channel``), in confirm mode: queue declarations and publishes.
  A publish returns when RabbitMQ confirmed every message (persistent, ``delivery_mode=2``,
  durable queue).
* the *consume* channel (``consume_channel``): one consumer (``basic_consume``) per fetched
  queue, each with its own ``basic_qos`` prefetch, acks and nacks. Deliveries wait in a local
  buffer (``inbox``) until ``fetch`` takes them.

Prefetch is bounded by what the caller asks for: the consumer's prefetch is
``min(prefetch_count, max_n + deliveries fetched but not yet acked)``, raised (by
re-subscribing) only when a fetch asks for more, so a worker never holds more unacked
messages than its concurrency plus its buffer.

Delays need no server plugin: a delayed message goes to ``<queue>.delay.<ms>``, a queue with
``x-message-ttl=<ms>`` that dead-letters into ``<queue>`` through the default exchange and
deletes itself (``x-expires``) when unused (``queues``).

Reconnect: when the connection drops, the I/O thread reconnects with backoff, re-subscribes
every queue it consumed and bumps a generation number. Deliveries of the dead channel are
dropped from the buffer and their acks are ignored: RabbitMQ redelivers them.

This module holds the broker: the URL and the ``callq_*`` hooks, run on the caller's thread.
"""

from __future__ import annotations

import functools
import logging
import re
import ssl
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import pika

from callq.broker import BrokerBase, Capabilities, Delivery
from callq.errors import BrokerError, ConfigError
from callq.url import BrokerURL

from .consume_channel import ConsumeChannel
from .inbox import Inbox
from .io_thread import IoThread
from .publish_channel import PublishChannel
from .queues import QUEUE_TYPES, QueueArguments

log = logging.getLogger("callq.rabbitmq")

KNOWN_PARAMS = ("prefetch_count", "max_priority", "heartbeat", "connect_timeout", "publish_timeout",
                "queue_expires", "tls_verify", "queue_type", "delivery_limit", "hosts")
#: most time an ack or nack waits for the I/O thread before the caller moves on
ACK_WAIT = 10.0

#: what ``size`` and ``purge`` run on a short-lived channel: ``action(channel, done)``
TempAction = Callable[[Any, Callable[[Any], None]], None]


class RabbitmqBroker(BrokerBase):
    """A callq broker on one RabbitMQ connection (thread-safe; pika runs on its own thread)."""

    heartbeat_interval = 30.0  # callq's heartbeat has nothing to do here: RabbitMQ tracks consumers
    # RabbitMQ: a short string of at most 255 bytes, amq.* reserved; 20 bytes kept for the
    # ".delay.MS" suffix of the delay queues
    max_queue_name = 235
    queue_name_pattern = r"(?!amq\.)[^\x00-\x1f\x7f]+"
    queue_name_rule = ("no control characters, not starting with 'amq.' (reserved by RabbitMQ); 235 bytes keep "
                       "its delay queues (QUEUE.delay.MS) within RabbitMQ's 255")

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
        self.connect_timeout = url.float_param("connect_timeout", 5.0, minimum=0.1)
        self.publish_timeout = url.float_param("publish_timeout", 30.0, minimum=0.1)
        expires = url.float_param("queue_expires", 0.0, minimum=0.0)
        self.queue_expires_ms = int(expires * 1000)
        params = [self._connection_parameters(url, heartbeat, host, port) for host, port in _hosts(url)]
        self.capabilities = Capabilities(
            acks=True, persistent=True, distributed=True, backlog=True, native_delay=True,
            priority=self.max_priority > 0, exact_size=True,
            # a killed consumer's TCP connection closes at once; a vanished host is noticed
            # after missed AMQP heartbeats
            redelivery_timeout=float(2 * heartbeat if heartbeat else 60),
        )

        self._names_ok: set[str] = set()  # queue names checked once
        queues = QueueArguments(self.queue_type, self.delivery_limit, self.max_priority, self.queue_expires_ms)
        self._inbox = Inbox()
        self._publisher = PublishChannel(queues)
        self._consumer = ConsumeChannel(queues, self._publisher, self._inbox)
        self._io = IoThread(url, params, self._publisher, self._consumer, name=f"callq-rabbitmq-io-{id(self):x}")
        self._io.start(self.connect_timeout)

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

    # --- the broker hooks --------------------------------------------------------------------------

    def _check_queue(self, queue: str) -> None:
        """ConfigError at once for a name RabbitMQ would refuse (it would close the channel, or hang)."""
        if queue in self._names_ok:
            return
        size = len(queue.encode())
        if size > 255 or not re.fullmatch(self.queue_name_pattern, queue):
            raise ConfigError(f"queue name {queue!r:.80} is not accepted by RabbitMQ: at most 255 bytes (this one "
                              f"has {size}), no control characters, not starting with 'amq.'")
        self._names_ok.add(queue)

    def callq_publish(self, queue: str, bodies: Sequence[bytes], delay: float, priority: int | None) -> int:
        self._check_queue(queue)
        bodies = list(bodies)
        if not bodies:
            return 0
        return int(self._io.call(functools.partial(self._publisher.publish, queue, bodies, delay, priority),
                                 self.publish_timeout, f"publish to {queue}"))

    def callq_fetch(self, queue: str, max_n: int, timeout: float) -> list[Delivery]:
        self._check_queue(queue)
        deadline = time.monotonic() + timeout
        want, before = self._inbox.raise_prefetch(queue, max_n, self.prefetch_count)
        if want > before and self._io.ready.is_set():
            try:
                self._io.call(functools.partial(self._consumer.subscribe, queue, want),
                              max(self.connect_timeout, 10.0), f"subscribe to {queue}")
            except BrokerError:
                self._inbox.undo_raise(queue, want, before)
                raise
        return self._inbox.take(queue, max_n, deadline)

    def _forget_outstanding(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        live = self._consumer.live(deliveries)
        self._inbox.settled(live)
        return live

    def _settle(self, deliveries: Sequence[Delivery], requeue: bool) -> int:
        live = self._forget_outstanding(deliveries)
        if not live or not self._io.ready.is_set():
            return len(deliveries)  # their channel is gone: RabbitMQ redelivers them
        try:
            fut = self._io.submit(functools.partial(self._consumer.settle, live, requeue))
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
        if not live or not self._io.ready.is_set():
            return len(deliveries)
        return int(self._io.call(functools.partial(self._consumer.requeue_later, live, delay),
                                 self.publish_timeout, "delayed requeue"))

    def callq_heartbeat(self) -> int:
        return 0  # RabbitMQ returns a dead consumer's unacked messages itself

    def _temp(self, action: TempAction, what: str) -> int:
        return int(self._io.call(functools.partial(self._io.temp_channel, action), self.publish_timeout, what))

    def callq_size(self, queue: str) -> int:
        self._check_queue(queue)
        def passive(ch: Any, done: Callable[[Any], None]) -> None:
            ch.queue_declare(queue, passive=True, callback=lambda f: done(f.method.message_count))

        return self._temp(passive, f"size of {queue}")

    def callq_purge(self, queue: str) -> int:
        self._check_queue(queue)
        def purge(name: str) -> TempAction:
            def action(ch: Any, done: Callable[[Any], None]) -> None:
                ch.queue_purge(name, callback=lambda f: done(f.method.message_count))
            return action

        names = [queue, *self._publisher.delay_queues(queue)]
        return sum(self._temp(purge(name), f"purge of {name}") for name in names)

    def callq_close(self) -> bool:
        if self._io.stop():
            self._inbox.close()  # fetches waiting return at once
            self._io.join(self.connect_timeout + 5)
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
