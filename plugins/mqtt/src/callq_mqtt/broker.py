"""``mqtt://host:1883?qos=1&group=callq``: callq queues as MQTT topics with shared subscriptions.

A queue is a topic. A connection that fetches from a queue subscribes to
``$share/<group>/<queue>`` (MQTT 5, QoS ``qos``), so the connections of one group split the
topic's messages: each message goes to one member. paho-mqtt runs its own network thread;
received messages wait in a local buffer until ``fetch`` takes them.

What MQTT does not give (and this broker does not claim):

* no backlog: a message published while no member of the group is subscribed is dropped;
* no acks: the client acknowledges a QoS 1 message when it reaches the local buffer, so a
  message fetched (or buffered) by a process that dies is lost; ``ack`` does nothing,
  ``requeue`` publishes the body again;
* no size or purge: the server keeps no queue; ``size`` is 0 and ``purge`` only empties this
  connection's local buffer.

Hand-back: a message that waits in this connection's buffer longer than ``handback`` seconds
without being fetched is published again, so another member of the group can take it (a busy
or idle subscriber does not sit on messages others could run).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from callq.broker import BrokerBase, Capabilities, Delivery
from callq.errors import BrokerError, ConfigError
from callq.url import BrokerURL

log = logging.getLogger("callq.mqtt")

KNOWN_PARAMS = ("qos", "group", "keepalive", "connect_timeout", "publish_timeout", "handback")


class MqttBroker(BrokerBase):
    """One paho-mqtt client per broker instance (thread-safe)."""

    heartbeat_interval = 30.0
    # a queue is a topic name, subscribed as $share/GROUP/QUEUE
    max_queue_name = 65_000
    queue_name_pattern = r"(?!\$)[^+#\x00-\x1f\x7f]+"
    queue_name_rule = ("an MQTT topic name: no wildcard + or #, no NUL or control characters, not starting "
                       "with $ (reserved by the server); 65,000 bytes leave room for the $share/GROUP/ prefix "
                       "within MQTT's 65,535")

    def __init__(self, url: BrokerURL) -> None:
        super().__init__(url)
        url.check_params(KNOWN_PARAMS)
        if url.scheme not in ("mqtt",):
            raise ConfigError(f"broker URL {url}: callq-mqtt handles mqtt://, not {url.scheme}://")
        self.qos = url.int_param("qos", 1)
        if self.qos not in (0, 1):
            raise ConfigError(f"broker URL {url}: qos must be 0 or 1")
        self.group = url.str_param("group", "callq")
        if not self.group or any(ch in self.group for ch in "/+#"):
            raise ConfigError(f"broker URL {url}: group must be a non-empty name without / + #")
        keepalive = url.int_param("keepalive", 30, minimum=5)
        self.connect_timeout = url.float_param("connect_timeout", 5.0, minimum=0.1)
        self.publish_timeout = url.float_param("publish_timeout", 30.0, minimum=0.1)
        self.handback = url.float_param("handback", 1.0)
        self.capabilities = Capabilities(acks=False, persistent=False, distributed=True, backlog=False,
                                         native_delay=False, priority=False, exact_size=False,
                                         redelivery_timeout=0.0)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._buffers: dict[str, deque[tuple[float, bytes]]] = {}
        self._topics: set[str] = set()
        self._acks: dict[int, threading.Event] = {}
        self._connected = threading.Event()
        self._refused: str | None = None  # the server's reason when it refused the first connection
        self._closed = False
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"callq-{uuid.uuid4().hex[:12]}",
                             protocol=mqtt.MQTTv5)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_sub_ack
        client.on_unsubscribe = self._on_sub_ack
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        client.max_queued_messages_set(0)
        client.connect_timeout = self.connect_timeout
        self._client = client
        try:
            client.connect(url.host or "localhost", url.port or 1883, keepalive=keepalive, clean_start=True)
        except OSError as exc:
            cause = exc.strerror or str(exc) or type(exc).__name__
            raise BrokerError(f"cannot connect to MQTT server at {url}: {cause[:1].lower() + cause[1:]}") from exc
        client.loop_start()
        if not self._connected.wait(self.connect_timeout) or self._refused:
            self._closed = True
            client.disconnect()
            client.loop_stop()
            cause = (f"refused: {self._refused}" if self._refused
                     else f"no CONNACK within {self.connect_timeout:g}s")
            raise BrokerError(f"cannot connect to MQTT server at {url}: {cause}")
        self._stop = threading.Event()
        if self.handback:
            threading.Thread(target=self._hand_back_loop, name=f"callq-mqtt-handback-{id(self):x}",
                             daemon=True).start()

    def _hand_back_loop(self) -> None:
        while not self._stop.wait(self.handback / 2):
            try:
                self._hand_back()
            except Exception as exc:  # noqa: BLE001 - next round tries again
                log.warning("hand-back on %s failed: %s", self.url, exc)

    # --- paho callbacks (paho's network thread) ----------------------------------------------

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            if not self._connected.is_set() and getattr(self, "_stop", None) is None:
                self._refused = str(reason)  # the constructor still waits: it reports this
                self._connected.set()
                return
            log.warning("MQTT server %s refused the connection: %s", self.url, reason)
            return
        with self._lock:
            topics = sorted(self._topics)
        for topic in topics:  # clean start: subscriptions are ours to renew
            client.subscribe(self._share(topic), qos=self.qos)
        self._connected.set()

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self._connected.clear()
        if not self._closed:
            log.warning("MQTT connection to %s lost (%s); paho reconnects", self.url, reason)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        with self._lock:
            if msg.topic not in self._topics:
                return  # unsubscribed (purge) while it travelled
            self._buffers.setdefault(msg.topic, deque()).append((now, msg.payload))
            self._cond.notify_all()

    def _on_sub_ack(self, _client: mqtt.Client, _userdata: Any, mid: int, *_rest: Any) -> None:
        with self._lock:
            self._acks.setdefault(mid, threading.Event()).set()

    # --- helpers -------------------------------------------------------------------------------

    def _share(self, topic: str) -> str:
        return f"$share/{self.group}/{topic}"

    def _wait_ack(self, mid: int, what: str) -> None:
        with self._lock:
            ev = self._acks.setdefault(mid, threading.Event())
        try:
            if not ev.wait(self.connect_timeout):
                raise BrokerError(f"{what} on {self.url}: no answer within {self.connect_timeout}s")
        finally:
            with self._lock:
                self._acks.pop(mid, None)

    @staticmethod
    def _check_topic(queue: str) -> None:
        if not queue or any(ch in queue for ch in "+#\0") or queue.startswith("$"):
            raise ConfigError(f"queue name {queue!r} is not a valid MQTT topic (no + # NUL, no leading $)")

    def _subscribe(self, queue: str) -> None:
        with self._lock:
            if queue in self._topics:
                return
            self._topics.add(queue)
        if not self._connected.is_set():
            return  # _on_connect subscribes
        rc, mid = self._client.subscribe(self._share(queue), qos=self.qos)
        if rc == mqtt.MQTT_ERR_SUCCESS:
            self._wait_ack(mid, f"subscribe to {queue}")

    def _hand_back(self) -> None:
        """Publish again what waited here too long, so another member of the group takes it."""
        now = time.monotonic()
        stale: dict[str, list[bytes]] = {}
        with self._lock:
            for topic, buf in self._buffers.items():
                while buf and now - buf[0][0] > self.handback:
                    stale.setdefault(topic, []).append(buf.popleft()[1])
        for topic, bodies in stale.items():
            log.debug("handing back %d message(s) of %s", len(bodies), topic)
            self._publish(topic, bodies)

    def _publish(self, queue: str, bodies: Sequence[bytes]) -> int:
        infos = [self._client.publish(queue, body, qos=self.qos) for body in bodies]
        deadline = time.monotonic() + self.publish_timeout
        for info in infos:
            if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
                raise BrokerError(f"publish to {queue} on {self.url} failed: {mqtt.error_string(info.rc)}")
            try:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                raise BrokerError(f"publish to {queue} on {self.url} failed: {exc}") from exc
            if not info.is_published():
                raise BrokerError(f"publish to {queue} on {self.url}: not acknowledged within "
                                  f"{self.publish_timeout}s")
        return len(bodies)

    # --- hooks -------------------------------------------------------------------------------

    def callq_publish(self, queue: str, bodies: Sequence[bytes], delay: float, priority: int | None) -> int:
        if self._closed:
            raise BrokerError(f"{self.url} is closed")
        self._check_topic(queue)
        return self._publish(queue, list(bodies))

    def callq_fetch(self, queue: str, max_n: int, timeout: float) -> list[Delivery]:
        if self._closed:
            raise BrokerError(f"{self.url} is closed")
        self._check_topic(queue)
        self._subscribe(queue)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                buf = self._buffers.get(queue)
                if buf:
                    n = min(max_n, len(buf))
                    return [Delivery(buf.popleft()[1], queue, None) for _ in range(n)]
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    return []
                self._cond.wait(remaining)

    def callq_ack(self, deliveries: Sequence[Delivery]) -> int:
        return len(deliveries)  # the client acknowledged them on arrival (QoS 1)

    def callq_requeue(self, deliveries: Sequence[Delivery], delay: float) -> int:
        by_queue: dict[str, list[bytes]] = {}
        for d in deliveries:
            by_queue.setdefault(d.queue, []).append(d.body)
        return sum(self._publish(q, bodies) for q, bodies in by_queue.items())

    def callq_size(self, queue: str) -> int:
        return 0  # MQTT servers keep no queue to count

    def callq_purge(self, queue: str) -> int:
        """Drop this connection's buffered messages of ``queue`` (and those already on the way)."""
        with self._lock:
            subscribed = queue in self._topics
            if subscribed:
                self._topics.discard(queue)
        if subscribed and self._connected.is_set():
            rc, mid = self._client.unsubscribe(self._share(queue))
            if rc == mqtt.MQTT_ERR_SUCCESS:
                self._wait_ack(mid, f"unsubscribe from {queue}")  # what was on the way has arrived now
        with self._lock:
            n = len(self._buffers.pop(queue, ()))
        if subscribed:
            self._subscribe(queue)
        return n

    def callq_close(self) -> bool:
        if self._closed:
            return True
        self._closed = True
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()
        return True
