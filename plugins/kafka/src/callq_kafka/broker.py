"""``kafka://host:9092/?bootstrap=host2:9092``: callq queues on Kafka topics (kafka-python).

A queue is a topic; its consumers form the consumer group ``<group_prefix><queue>``, so each
message goes to one consumer of the queue and partitions bound the parallelism across
consumer processes (a topic of N partitions feeds at most N consumers; a worker's own
threads share its partitions). Offsets are committed only after the calls' outcomes, as a
per-partition watermark (see :mod:`callq_kafka.offsets`): at-least-once. Requeue and retry
republish the message, then mark the old offset settled. No native delay and no priority:
the runner holds delays.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Sequence
from typing import Any

from kafka import KafkaConsumer
from kafka.errors import KafkaError, TopicAlreadyExistsError

from callq.broker import BrokerBase, Capabilities, Delivery
from callq.errors import BrokerError, ConfigError
from callq.url import BrokerURL

from .admin import QueueAdmin
from .consumer import QueueConsumer
from .params import parse_api_version, parse_hosts, topic_for
from .producer import ConfluentProducer, KafkaPythonProducer

log = logging.getLogger("callq.kafka")

KNOWN_PARAMS = ("bootstrap", "client", "partitions", "replication", "api_version", "session_timeout", "group_prefix",
                "connect_timeout", "publish_timeout", "max_message_bytes", "acks")


class KafkaBroker(QueueAdmin, BrokerBase):
    """A callq broker on a Kafka cluster (thread-safe)."""

    heartbeat_interval = 1.0  # commits settled offsets and answers rebalances while the runner is busy

    def __init__(self, url: BrokerURL) -> None:
        super().__init__(url)
        url.check_params(KNOWN_PARAMS)
        self.hosts = parse_hosts(url)
        self.api_version = parse_api_version(url)
        self.old = self.api_version is not None and self.api_version < (0, 10, 1)
        self.partitions = url.int_param("partitions", 4, minimum=1)
        self.replication = url.int_param("replication", 1, minimum=1)
        self._check_old()
        self.session_timeout = url.float_param("session_timeout", 6.0, minimum=1.0)
        self.group_prefix = url.str_param("group_prefix", "callq.")
        self.connect_timeout = url.float_param("connect_timeout", 10.0, minimum=0.1)
        self.publish_timeout = url.float_param("publish_timeout", 30.0, minimum=0.1)
        self.max_message_bytes = url.int_param("max_message_bytes", 4 * 1024 * 1024, minimum=1024)
        acks = url.str_param("acks", "all", choices=("all", "1"))
        self.capabilities = Capabilities(
            acks=True, persistent=True, distributed=True, backlog=True, native_delay=False,
            priority=False, exact_size=False, shared_state=False,
            # a dead member is dropped after session_timeout; the group then rebalances
            redelivery_timeout=self.session_timeout + 5.0,
        )
        self._common: dict[str, Any] = {
            "bootstrap_servers": self.hosts, "client_id": "callq",
            "request_timeout_ms": int(max(self.publish_timeout, self.session_timeout + 5) * 1000),
            "bootstrap_timeout_ms": int(self.connect_timeout * 1000),
        }
        if self.api_version is not None:
            self._common["api_version"] = self.api_version
        self._lock = threading.Lock()
        self._consumers: dict[str, QueueConsumer] = {}
        self._tools: dict[str, KafkaConsumer] = {}
        self._topics: set[str] = set()
        self._closed = False
        self.client = url.str_param("client", "kafka-python", choices=("kafka-python", "confluent"))
        self._producer = self._open_producer(acks)

    def _check_old(self) -> None:
        if self.old and ("partitions" in self.url.query or "replication" in self.url.query):
            raise ConfigError(f"broker URL {self.url}: Kafka before 0.10.1 has no CreateTopics API; "
                              "topics are auto-created with the server's num.partitions and "
                              "default.replication.factor, so partitions= and replication= cannot apply")

    def _open_producer(self, acks: str) -> KafkaPythonProducer | ConfluentProducer:
        if self.client == "confluent":
            if self.api_version is not None and self.api_version < (0, 10):
                raise ConfigError(f"broker URL {self.url}: client=confluent does not work with Kafka "
                                  f"{self.url.query['api_version']} (librdkafka cannot read its metadata)")
            return ConfluentProducer(self.hosts, acks, self.max_message_bytes)
        try:
            return KafkaPythonProducer(self._common, acks, self.max_message_bytes)
        except KafkaError as exc:
            if self.api_version is not None:
                raise BrokerError(f"cannot connect to Kafka at {self.url}: {exc}") from exc
            first = exc
        # api_version=auto asks the server for its versions (ApiVersions, Kafka >= 0.10), which
        # Kafka 0.9 answers by closing the connection: try once more speaking 0.9
        try:
            if not any(_reachable(host, self.connect_timeout) for host in self.hosts):
                raise first  # nothing listens: not a version question
            producer = KafkaPythonProducer({**self._common, "api_version": (0, 9)}, acks, self.max_message_bytes)
        except KafkaError:
            raise BrokerError(f"cannot connect to Kafka at {self.url}: {first} (if the server is older than "
                              "0.10, add api_version=0.9 to the URL)") from first
        log.info("Kafka at %s answers only the 0.9 protocol: using api_version=0.9", self.url)
        self.api_version = (0, 9)
        self._common["api_version"] = self.api_version
        self.old = True
        try:
            self._check_old()
        except ConfigError:
            producer.close(1.0)
            raise
        return producer

    def _consumer_config(self) -> dict[str, Any]:
        session_ms = int(self.session_timeout * 1000)
        return {**self._common, "session_timeout_ms": session_ms,
                "heartbeat_interval_ms": max(100, session_ms // 6),
                # before 0.10.1 the group has no separate rebalance timeout: both are the session timeout
                "max_poll_interval_ms": session_ms if self.old else max(session_ms, 60_000),
                "fetch_max_wait_ms": 200,
                "max_partition_fetch_bytes": self.max_message_bytes + 65536}

    # --- topics ------------------------------------------------------------------------------

    def _ensure_topic(self, queue: str) -> str:
        topic = topic_for(queue)
        if topic in self._topics:
            return topic
        if not self.old:  # Kafka 0.9 has no CreateTopics: the server auto-creates on first use
            from kafka.admin import KafkaAdminClient, NewTopic

            try:
                admin = KafkaAdminClient(**self._common)
            except KafkaError as exc:
                raise BrokerError(f"cannot reach Kafka at {self.url} to create topic {topic}: {exc}") from exc
            try:
                admin.create_topics([NewTopic(topic, self.partitions, self.replication)])
            except TopicAlreadyExistsError:
                pass
            except KafkaError as exc:
                raise BrokerError(f"creating topic {topic} on {self.url} failed: {exc}") from exc
            finally:
                admin.close()
        self._topics.add(topic)
        return topic

    # --- the broker hooks ------------------------------------------------------------------------

    def callq_publish(self, queue: str, bodies: Sequence[bytes], delay: float, priority: int | None) -> int:
        bodies = list(bodies)
        if not bodies:
            return 0
        topic = self._ensure_topic(queue)
        try:
            self._producer.send(topic, bodies, self.publish_timeout)
        except BrokerError as exc:
            raise BrokerError(f"{exc} (on {self.url})") from exc
        return len(bodies)

    def _consumer(self, queue: str) -> QueueConsumer:
        consumer = self._consumers.get(queue)
        if consumer is None:
            topic = self._ensure_topic(queue)
            with self._lock:
                if self._closed:
                    raise BrokerError(f"Kafka connection {self.url} is closed")
                consumer = self._consumers.get(queue)
                if consumer is None:
                    try:
                        consumer = QueueConsumer(queue, topic, self.group_prefix + queue, self._consumer_config())
                    except KafkaError as exc:
                        raise BrokerError(f"cannot consume {queue} on {self.url}: {exc}") from exc
                    self._consumers[queue] = consumer
        return consumer

    def callq_fetch(self, queue: str, max_n: int, timeout: float) -> list[Delivery]:
        if self._closed:
            return []
        try:
            return self._consumer(queue).fetch(max(1, max_n), timeout)
        except KafkaError as exc:
            raise BrokerError(f"fetch from {queue} on {self.url} failed: {type(exc).__name__}: {exc}") from exc

    def _by_queue(self, deliveries: Sequence[Delivery]) -> dict[str, list[Delivery]]:
        out: dict[str, list[Delivery]] = {}
        for d in deliveries:
            out.setdefault(d.queue, []).append(d)
        return out

    def callq_ack(self, deliveries: Sequence[Delivery]) -> int:
        for queue, group in self._by_queue(deliveries).items():
            consumer = self._consumers.get(queue)
            if consumer is not None:
                consumer.settle(group)  # committed by the next fetch or heartbeat
        return len(deliveries)

    def callq_requeue(self, deliveries: Sequence[Delivery], delay: float) -> int:
        """Republish at the end of the topic, then mark the old offsets settled (no native delay)."""
        for queue, group in self._by_queue(deliveries).items():
            self.callq_publish(queue, [d.body for d in group], 0.0, None)
            consumer = self._consumers.get(queue)
            if consumer is not None:
                consumer.settle(group)
        return len(deliveries)

    def callq_heartbeat(self) -> int:
        for consumer in list(self._consumers.values()):
            try:
                consumer.heartbeat()
            except KafkaError as exc:
                log.warning("Kafka heartbeat of %s on %s: %s", consumer.queue, self.url, exc)
        return 0  # Kafka itself hands a dead member's partitions to the others

    def callq_close(self) -> bool:
        with self._lock:
            if self._closed:
                return True
            self._closed = True
            consumers = list(self._consumers.values())
            tools = list(self._tools.values())
            self._consumers.clear()
            self._tools.clear()
        for consumer in consumers:
            consumer.close()
        for tool in tools:
            try:
                tool.close(autocommit=False)
            except Exception as exc:  # noqa: BLE001
                log.debug("closing a Kafka tool consumer: %s", exc)
        try:
            self._producer.close(timeout=self.publish_timeout)
        except Exception as exc:  # noqa: BLE001
            log.warning("closing the Kafka producer of %s: %s", self.url, exc)
        return True


def _reachable(host: str, timeout: float) -> bool:
    name, _, port = host.rpartition(":")
    try:
        with socket.create_connection((name.strip("[]"), int(port)), timeout=min(timeout, 3.0)):
            return True
    except OSError:
        return False
