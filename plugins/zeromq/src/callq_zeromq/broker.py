"""``zmq://host:port`` (or ``zmq:///path/to/socket`` for IPC): callq over ZeroMQ PUSH/PULL, no server.

Topology: the consuming process *binds* one PULL socket at the URL's endpoint when it first
fetches; every process that publishes *connects* a PUSH socket to it. A message is two frames,
``[queue, body]``; the consumer sorts them into one in-memory buffer per queue. One endpoint
serves any number of queues and producers, and exactly one consuming process (a second one
cannot bind the same endpoint).

Guarantees: none beyond "delivered while both sides live". No acks (ack is a no-op, requeue
puts the message back into this process's buffer), no persistence, no backlog: what the
consumer holds in its buffers or socket queues is lost if it dies, and what a producer holds
for an absent consumer is lost when the producer exits (after ``linger``). See docs/brokers/zeromq.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence

import zmq

from callq.broker import BrokerBase, Capabilities, Delivery
from callq.errors import BrokerError, ConfigError
from callq.url import BrokerURL

log = logging.getLogger("callq.zeromq")

KNOWN_PARAMS = ("hwm", "send_timeout", "linger")
#: purge also drops messages still on the wire: it waits until the queue is quiet this long
PURGE_QUIET = 0.05
PURGE_MAX = 2.0


def endpoint(url: BrokerURL) -> str:
    if url.scheme not in ("zmq", "zeromq"):
        raise ConfigError(f"broker URL {url}: callq-zeromq handles zmq:// and zeromq://, not {url.scheme}://")
    if url.host:
        if not url.port:
            raise ConfigError(f"broker URL {url}: a TCP endpoint needs a port, e.g. zmq://127.0.0.1:5555")
        if url.path not in ("", "/"):
            raise ConfigError(f"broker URL {url}: no path expected after host:port")
        host = f"[{url.host}]" if ":" in url.host else url.host
        return f"tcp://{host}:{url.port}"
    if not url.path or url.path == "/":
        raise ConfigError(f"broker URL {url}: expected zmq://host:port or zmq:///path/to/socket (IPC)")
    return f"ipc://{url.path}"


class ZeromqBroker(BrokerBase):
    """PUSH (publish) / PULL (fetch) sockets on one endpoint; thread-safe."""

    heartbeat_interval = 30.0  # nothing to keep alive

    def __init__(self, url: BrokerURL) -> None:
        super().__init__(url)
        url.check_params(KNOWN_PARAMS)
        self.endpoint = endpoint(url)
        self.hwm = url.int_param("hwm", 10000, minimum=1)
        self.send_timeout = url.float_param("send_timeout", 5.0)
        self.linger = url.float_param("linger", 1.0)
        self.capabilities = Capabilities(
            acks=False, persistent=False, distributed=False, backlog=False, native_delay=False,
            priority=False, exact_size=False, shared_state=False, redelivery_timeout=0.0,
        )
        self.ctx = zmq.Context()
        self._push: zmq.Socket | None = None
        self._push_lock = threading.Lock()
        self._cond = threading.Condition()
        self._buffers: dict[str, deque[bytes]] = {}
        self._receiver: threading.Thread | None = None
        self._wake_addr = f"inproc://callq-wake-{id(self):x}"
        self._closed = False

    # --- publish ---------------------------------------------------------------------------

    def _push_socket(self) -> zmq.Socket:
        if self._push is None:
            sock = self.ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, self.hwm)
            sock.setsockopt(zmq.SNDTIMEO, int(self.send_timeout * 1000))
            sock.setsockopt(zmq.LINGER, int(self.linger * 1000))
            sock.setsockopt(zmq.IMMEDIATE, 0)  # queue for a consumer that is not there yet (up to hwm)
            sock.connect(self.endpoint)
            self._push = sock
        return self._push

    def callq_publish(self, queue: str, bodies: Sequence[bytes], delay: float, priority: int | None) -> int:
        if not bodies:
            return 0
        name = queue.encode()
        with self._push_lock:
            if self._closed:
                raise BrokerError(f"zeromq {self.url}: connection is closed")
            sock = self._push_socket()
            for i, body in enumerate(bodies):
                try:
                    sock.send_multipart((name, body), copy=len(body) < 65536)
                except zmq.Again:
                    raise BrokerError(
                        f"zeromq {self.url}: sent {i} of {len(bodies)} message(s); the rest found no consumer "
                        f"within {self.send_timeout:.1f}s (is a worker bound at {self.endpoint}? "
                        f"ZeroMQ holds at most hwm={self.hwm} messages for it)") from None
                except zmq.ZMQError as exc:
                    raise BrokerError(f"zeromq {self.url}: publish failed: {exc}") from exc
        return len(bodies)

    # --- fetch -----------------------------------------------------------------------------

    def _start_receiver(self) -> None:
        pull = self.ctx.socket(zmq.PULL)
        pull.setsockopt(zmq.RCVHWM, self.hwm)
        pull.setsockopt(zmq.LINGER, 0)
        try:
            pull.bind(self.endpoint)
        except zmq.ZMQError as exc:
            pull.close()
            raise BrokerError(f"zeromq {self.url}: cannot bind {self.endpoint} to consume ({exc}); only one "
                              "process can consume from an endpoint") from exc
        wake = self.ctx.socket(zmq.PAIR)
        wake.bind(self._wake_addr)
        self._receiver = threading.Thread(target=self._receive, args=(pull, wake), daemon=True,
                                          name=f"callq-zeromq-{id(self):x}")
        self._receiver.start()

    def _receive(self, pull: zmq.Socket, wake: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(pull, zmq.POLLIN)
        poller.register(wake, zmq.POLLIN)
        try:
            while True:
                events = dict(poller.poll())
                if wake in events:
                    return
                got: list[list[bytes]] = []
                while len(got) < 1000:
                    try:
                        got.append(pull.recv_multipart(zmq.NOBLOCK))
                    except zmq.Again:
                        break
                with self._cond:
                    for frames in got:
                        if len(frames) != 2:
                            log.warning("zeromq %s: dropped a message of %d frames (expected 2)", self.url, len(frames))
                            continue
                        queue = frames[0].decode("utf-8", "replace")
                        buf = self._buffers.get(queue)
                        if buf is None:
                            buf = self._buffers[queue] = deque()
                        buf.append(frames[1])
                    self._cond.notify_all()
        except zmq.ZMQError as exc:
            if not self._closed:
                log.error("zeromq %s: receiver stopped: %s", self.url, exc)
        finally:
            pull.close(0)
            wake.close(0)

    def callq_fetch(self, queue: str, max_n: int, timeout: float) -> list[Delivery]:
        if max_n <= 0 or self._closed:
            return []
        if self._receiver is None:
            with self._push_lock:
                if self._receiver is None:
                    self._start_receiver()
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                buf = self._buffers.get(queue)
                if buf:
                    return [Delivery(buf.popleft(), queue, None) for _ in range(min(max_n, len(buf)))]
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    return []
                self._cond.wait(remaining)

    # --- settle / size / purge / close -----------------------------------------------------

    def callq_ack(self, deliveries: Sequence[Delivery]) -> int:
        return len(deliveries)  # nothing to tell anyone: the message left the sender when it was sent

    def callq_requeue(self, deliveries: Sequence[Delivery], delay: float) -> int:
        with self._cond:
            for d in reversed(deliveries):
                self._buffers.setdefault(d.queue, deque()).appendleft(d.body)
            self._cond.notify_all()
        return len(deliveries)

    def callq_size(self, queue: str) -> int:
        with self._cond:
            return len(self._buffers.get(queue, ()))

    def callq_purge(self, queue: str) -> int:
        """Drop what is buffered for ``queue`` and what still arrives until it is quiet for ``PURGE_QUIET`` s."""
        if self._receiver is None:
            return 0  # not the consumer: nothing of this queue is here
        n = 0
        deadline = time.monotonic() + PURGE_MAX
        with self._cond:
            while True:
                buf = self._buffers.pop(queue, None)
                n += len(buf) if buf else 0
                if time.monotonic() > deadline or not self._cond.wait(PURGE_QUIET) and not self._buffers.get(queue):
                    return n

    def callq_close(self) -> bool:
        with self._push_lock:
            if self._closed:
                return True
            self._closed = True
        with self._cond:
            self._cond.notify_all()
        if self._receiver is not None:
            signal = self.ctx.socket(zmq.PAIR)
            signal.connect(self._wake_addr)
            signal.send(b"")
            self._receiver.join(5)
            signal.close(0)
        if self._push is not None:
            self._push.close()  # waits up to linger for queued messages to leave
        self.ctx.term()
        with self._cond:
            dropped = sum(len(b) for b in self._buffers.values())
            self._buffers.clear()
        if dropped:
            log.warning("zeromq %s: closed with %d received message(s) not fetched; they are lost", self.url, dropped)
        return True

    def __repr__(self) -> str:
        return f"ZeromqBroker({self.endpoint!r})"
