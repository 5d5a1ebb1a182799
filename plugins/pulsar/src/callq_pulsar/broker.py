"""``pulsar://host:6650/tenant/namespace``: one topic and one shared subscription per queue.

* publish: one producer per queue (``send_async`` for every body, then wait for every receipt;
  up to ``batch`` messages travel as one entry); the queue's subscription is made before the first publish, so
  messages published before any consumer connects are kept (backlog).
* fetch: one ``Shared`` consumer per queue and connection; about ``prefetch`` messages wait
  in the client's receiver queue on top of what fetch handed out (entries, with ``batch``).
* ack: individual acknowledge; requeue: negative acknowledge (back after ``nack_delay``).
* no lease: the broker gives a consumer's unacked messages to others when its connection
  closes (process exit, kill -9: at once) or stops answering the broker's keep-alive pings
  (a frozen process or a lost host: after the server's keep-alive timeout). Heartbeats have
  nothing to renew.
* optional dead-letter policy (``max_redeliveries``): a message redelivered that many times
  goes to ``<queue>.dlq``, the queue callq's own dead letters use.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import pulsar
from pulsar.exceptions import AlreadyClosed, PulsarException

from callq.broker import BrokerBase, Capabilities, Delivery
from callq.errors import BrokerError, ConfigError
from callq.url import BrokerURL

from ._client import ClientKey, acquire_client, live_brokers, release_client

log = logging.getLogger("callq.pulsar")

KNOWN_PARAMS = ("subscription", "prefetch", "nack_delay", "max_redeliveries", "redelivery",
                "batch", "operation_timeout", "client_log")
#: longest single blocking receive; a fetch with a longer timeout loops (and sees close())
MAX_BLOCK_MS = 1000
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-=:]*$")
_NAME_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-=:]*$")


class PulsarBroker(BrokerBase):
    """Queues on Pulsar topics; see the module docstring and docs/brokers/pulsar.md."""

    def __init__(self, url: BrokerURL) -> None:
        super().__init__(url)
        if url.scheme != "pulsar":
            raise ConfigError(f"broker URL {url}: scheme must be pulsar://")
        url.check_params(KNOWN_PARAMS)
        if url.username or url.password:
            raise ConfigError(f"broker URL {url}: authentication is not supported by callq-pulsar yet")
        parts = [p for p in url.path.split("/") if p]
        if not parts:
            parts = ["public", "default"]
        if len(parts) != 2 or not all(_NAME_PART.match(p) for p in parts):
            raise ConfigError(f"broker URL {url}: the path must be /tenant/namespace, got {url.path!r}")
        self.tenant, self.namespace = parts
        self.subscription = url.str_param("subscription", "callq")
        if not _NAME_PART.match(self.subscription):
            raise ConfigError(f"broker URL {url}: subscription {self.subscription!r} is not a valid name")
        self.prefetch = url.int_param("prefetch", 20, minimum=1)
        self.nack_delay = url.float_param("nack_delay", 0.1, minimum=0.0)
        self.max_redeliveries = url.int_param("max_redeliveries", 0)
        # Off by default: a batch travels as one entry to one consumer, and pulsar-lite counts
        # a consumer's prefetch in entries, so batches loosen the prefetch bound (see the docs).
        self.batch = url.int_param("batch", 1, minimum=1)
        timeout = url.int_param("operation_timeout", 30, minimum=1)
        redelivery = url.float_param("redelivery", 60.0, minimum=1.0)
        self.capabilities = Capabilities(
            acks=True,
            persistent=True,
            distributed=True,
            backlog=True,
            native_delay=False,  # deliver_after was ignored by the server tested (pulsar-lite 0.2)
            priority=False,
            exact_size=False,  # counting needs the admin (HTTP) API: size() is always 0
            shared_state=False,
            redelivery_timeout=redelivery,
        )
        self.service_url = f"pulsar://{url.host or 'localhost'}:{url.port or 6650}"
        self.consumer_name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        # where the C++ client's own log lines go; see "Logging" in docs/brokers/pulsar.md
        log_to = url.str_param("client_log", "console", choices=("python", "console"))
        self._client_key: ClientKey = (os.getpid(), self.service_url, timeout, log_to)
        try:
            self.client = acquire_client(self._client_key)
        except (PulsarException, ValueError) as exc:
            raise ConfigError(f"broker URL {url}: {type(exc).__name__}: {exc}") from None
        self._lock = threading.Lock()
        self._producers: dict[str, pulsar.Producer] = {}
        self._consumers: dict[str, pulsar.Consumer] = {}
        self._subscribed: set[str] = set()
        self._closed = False
        live_brokers.add(self)

    # --- helpers -------------------------------------------------------------------------

    def topic(self, queue: str) -> str:
        if not _QUEUE_NAME.match(queue):
            raise ConfigError(f"queue name {queue!r} is not a valid Pulsar topic name "
                              "(letters, digits, _ . - = : only)")
        return f"persistent://{self.tenant}/{self.namespace}/{queue}"

    def _error(self, what: str, exc: BaseException) -> BrokerError:
        return BrokerError(f"pulsar {self.url}: {what} failed: {type(exc).__name__}: {exc}")

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerError(f"pulsar {self.url}: the connection is closed")

    def _subscribe(self, queue: str, receiver_queue_size: int) -> pulsar.Consumer:
        policy = None
        if self.max_redeliveries:
            policy = pulsar.ConsumerDeadLetterPolicy(
                max_redeliver_count=self.max_redeliveries, dead_letter_topic=self.topic(f"{queue}.dlq"),
                initial_subscription_name=self.subscription)  # kept until someone reads it
        return self.client.subscribe(
            self.topic(queue), self.subscription,
            consumer_type=pulsar.ConsumerType.Shared,
            receiver_queue_size=receiver_queue_size,
            negative_ack_redelivery_delay_ms=int(self.nack_delay * 1000),
            initial_position=pulsar.InitialPosition.Earliest,
            consumer_name=self.consumer_name,
            dead_letter_policy=policy,
        )

    def _consumer(self, queue: str) -> pulsar.Consumer:
        consumer = self._consumers.get(queue)
        if consumer is not None:
            return consumer
        with self._lock:
            self._check_open()
            consumer = self._consumers.get(queue)
            if consumer is None:
                try:
                    consumer = self._subscribe(queue, self.prefetch)
                except PulsarException as exc:
                    raise self._error(f"subscribe to {queue}", exc) from exc
                self._consumers[queue] = consumer
                self._subscribed.add(queue)
            return consumer

    def _producer(self, queue: str) -> pulsar.Producer:
        producer = self._producers.get(queue)
        if producer is not None:
            return producer
        with self._lock:
            self._check_open()
            producer = self._producers.get(queue)
            if producer is None:
                try:
                    if queue not in self._subscribed:
                        # A durable subscription keeps what is published before any consumer
                        # connects; a consumer with no receiver queue creates it and leaves.
                        self._subscribe(queue, 0).close()
                        self._subscribed.add(queue)
                    producer = self.client.create_producer(
                        self.topic(queue), producer_name=None, block_if_queue_full=True,
                        batching_enabled=self.batch > 1, batching_max_messages=max(2, self.batch),
                        batching_max_publish_delay_ms=1)
                except PulsarException as exc:
                    raise self._error(f"create a producer for {queue}", exc) from exc
                self._producers[queue] = producer
            return producer

    # --- publish -------------------------------------------------------------------------

    def callq_publish(self, queue: str, bodies: Sequence[bytes], delay: float, priority: int | None) -> int:
        if not bodies:
            return 0
        producer = self._producer(queue)
        if len(bodies) == 1:
            try:
                producer.send(bytes(bodies[0]))
            except PulsarException as exc:
                raise self._error(f"publish to {queue}", exc) from exc
            return 1
        results: list[Any] = []
        sent = results.append  # called on the client's I/O thread, once per message

        try:
            for body in bodies:
                producer.send_async(bytes(body), lambda result, _msg_id: sent(result))
            producer.flush()
        except PulsarException as exc:
            raise self._error(f"publish to {queue}", exc) from exc
        deadline = time.monotonic() + 60
        while len(results) < len(bodies):  # flush returns with the receipts; callbacks may trail
            if time.monotonic() > deadline:
                raise BrokerError(f"pulsar {self.url}: publish to {queue}: {len(bodies) - len(results)} "
                                  "receipt(s) missing after 60s")
            time.sleep(0.0005)
        failed = [r for r in results if r != pulsar.Result.Ok]
        if failed:
            raise BrokerError(f"pulsar {self.url}: publish to {queue}: {len(failed)} of {len(bodies)} "
                              f"message(s) failed ({failed[0]})")
        return len(bodies)

    # --- fetch ---------------------------------------------------------------------------

    def callq_fetch(self, queue: str, max_n: int, timeout: float) -> list[Delivery]:
        if max_n <= 0 or self._closed:
            return []
        consumer = self._consumer(queue)
        deadline = time.monotonic() + timeout
        msg = None
        try:
            while msg is None:
                wait_ms = int(min(MAX_BLOCK_MS, max(0.0, deadline - time.monotonic()) * 1000))
                try:
                    msg = consumer.receive(wait_ms)
                except pulsar.Timeout:
                    if self._closed or time.monotonic() >= deadline:
                        return []
            out = [self._delivery(queue, consumer, msg)]
            while len(out) < max_n:
                try:
                    out.append(self._delivery(queue, consumer, consumer.receive(0)))
                except pulsar.Timeout:
                    break
        except AlreadyClosed:
            if self._closed:
                return []
            raise BrokerError(f"pulsar {self.url}: the consumer of {queue} was closed") from None
        except PulsarException as exc:
            raise self._error(f"fetch from {queue}", exc) from exc
        return out

    @staticmethod
    def _delivery(queue: str, consumer: pulsar.Consumer, msg: pulsar.Message) -> Delivery:
        return Delivery(msg.data(), queue, (consumer, msg), msg.redelivery_count() > 0)

    # --- ack / requeue -------------------------------------------------------------------

    def callq_ack(self, deliveries: Sequence[Delivery]) -> int:
        for d in deliveries:
            consumer, msg = d.tag
            try:
                consumer.acknowledge(msg)
            except AlreadyClosed:
                pass  # its consumer is gone: the broker has given the message to another
            except PulsarException as exc:
                raise self._error(f"ack on {d.queue}", exc) from exc
        return len(deliveries)

    def callq_requeue(self, deliveries: Sequence[Delivery], delay: float) -> int:
        # no per-message delay in Pulsar's negative ack: back after nack_delay (the runner
        # passes delay=0 to brokers without native_delay)
        for d in deliveries:
            consumer, msg = d.tag
            try:
                consumer.negative_acknowledge(msg)
            except AlreadyClosed:
                pass
            except PulsarException as exc:
                raise self._error(f"requeue on {d.queue}", exc) from exc
        return len(deliveries)

    # --- size / purge / close ------------------------------------------------------------

    def callq_size(self, queue: str) -> int:
        return 0  # the backlog count is only in the admin (HTTP) API; see docs/brokers/pulsar.md

    def callq_purge(self, queue: str) -> int:
        """Receive and ack what this connection can receive until 0.3 s pass with nothing."""
        consumer = self._consumers.get(queue)
        temporary = consumer is None
        if temporary:  # a consumer left open would keep prefetching messages nobody fetches
            self._check_open()
            try:
                consumer = self._subscribe(queue, 1000)
            except PulsarException as exc:
                raise self._error(f"purge of {queue}", exc) from exc
            self._subscribed.add(queue)
        assert consumer is not None
        n = 0
        try:
            while True:
                try:
                    msg = consumer.receive(300)
                except pulsar.Timeout:
                    return n
                consumer.acknowledge(msg)
                n += 1
        except PulsarException as exc:
            raise self._error(f"purge of {queue}", exc) from exc
        finally:
            if temporary:
                try:
                    consumer.close()
                except PulsarException:
                    pass

    def callq_close(self) -> bool:
        with self._lock:
            if self._closed:
                return True
            self._closed = True
            consumers = list(self._consumers.values())
            producers = list(self._producers.values())
        for item in (*consumers, *producers):  # closing a consumer gives back its unacked messages
            try:
                item.close()
            except PulsarException as exc:
                log.warning("pulsar %s: closing %s failed: %s", self.url, type(item).__name__, exc)
        try:
            release_client(self._client_key)
        except PulsarException as exc:
            log.warning("pulsar %s: closing the client failed: %s", self.url, exc)
        return True

    def __repr__(self) -> str:
        return f"PulsarBroker({str(self.url)!r}, consumer={self.consumer_name!r})"
