"""callq-rabbitmq specifics on a real RabbitMQ: URLs, prefetch bound, delays, priorities, threads."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

import pika
import pytest

from callq.broker import Connection
from callq.errors import BrokerError, ConfigError
from callq.testing import drain, fresh_queue_name
from callq_rabbitmq.queues import delay_ms, delay_queue_name

BASE = "amqp://guest:guest@127.0.0.1:5672/%2F"
URL = f"{BASE}?queue_expires=600"


def raw_channel() -> tuple[pika.BlockingConnection, object]:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672))
    return conn, conn.channel()


def delete_queues(*names: str) -> None:
    conn, ch = raw_channel()
    try:
        for name in names:
            ch.queue_delete(name)  # type: ignore[attr-defined]
    finally:
        conn.close()


@pytest.fixture
def conn() -> Iterator[Connection]:
    c = Connection(URL)
    yield c
    c.close()


@pytest.fixture
def queue() -> Iterator[str]:
    name = fresh_queue_name("cq-rmq")
    yield name
    delete_queues(name, f"{name}.dlq")


def test_url_parameters_are_checked() -> None:
    with pytest.raises(ConfigError, match="unknown parameter"):
        Connection(f"{BASE}?prefetch=3")
    with pytest.raises(ConfigError, match="prefetch_count"):
        Connection(f"{BASE}?prefetch_count=0")
    with pytest.raises(ConfigError, match="max_priority"):
        Connection(f"{BASE}?max_priority=300")
    with pytest.raises(ConfigError, match="amqps"):
        Connection(f"{BASE}?tls_verify=false")


def test_unreachable_server_fails_loudly() -> None:
    started = time.monotonic()
    with pytest.raises(BrokerError, match="cannot connect"):
        Connection("amqp://guest:guest@127.0.0.1:1/?connect_timeout=1")
    assert time.monotonic() - started < 5


def test_wrong_credentials_fail_loudly() -> None:
    with pytest.raises(BrokerError, match="cannot connect"):
        Connection("amqp://guest:nope@127.0.0.1:5672/?connect_timeout=2")


def test_vhost_from_path() -> None:
    # '/%2F' and '//' both name the default vhost "/"; an unknown vhost is refused by the server
    for url in (f"{BASE}", "amqp://guest:guest@127.0.0.1:5672//", "amqp://guest:guest@127.0.0.1:5672"):
        Connection(url).close()
    with pytest.raises(BrokerError):
        Connection("amqp://guest:guest@127.0.0.1:5672/no-such-vhost?connect_timeout=2")


def test_priority_claim_follows_max_priority() -> None:
    on, off = Connection(URL), Connection(f"{URL}&max_priority=0")
    try:
        assert on.capabilities.priority and not off.capabilities.priority
        assert on.capabilities.acks and on.capabilities.persistent and on.capabilities.native_delay
    finally:
        on.close()
        off.close()


def test_queue_declared_with_other_arguments_is_a_config_error(conn: Connection, queue: str) -> None:
    conn.publish(queue, [b"x"])  # declared with x-max-priority=10
    other = Connection(f"{URL}&max_priority=5")
    try:
        with pytest.raises(ConfigError, match="max_priority"):
            other.publish(queue, [b"y"])
        with pytest.raises(ConfigError):
            other.fetch(queue, 1, 0.5)
        # the connection stays usable for other queues
        second = fresh_queue_name("cq-rmq")
        try:
            assert other.publish(second, [b"z"]) == 1
            assert [d.body for d in drain(other, second, 1)] == [b"z"]
        finally:
            delete_queues(second)
    finally:
        other.close()
    assert [d.body for d in drain(conn, queue, 1)] == [b"x"]


def test_prefetch_is_bounded_by_what_fetch_asks(conn: Connection, queue: str) -> None:
    conn.publish(queue, [f"m{i}".encode() for i in range(60)])
    first = conn.fetch(queue, 5, 5.0)
    assert len(first) == 5
    time.sleep(0.3)  # let RabbitMQ push whatever the prefetch allows
    other = Connection(URL)
    try:
        rest = drain(other, queue, 55, timeout=10)
        assert len(rest) == 55, "the first consumer took more than it asked for"
    finally:
        other.close()
    conn.ack(first)


def test_prefetch_count_caps_the_consumer(queue: str) -> None:
    capped = Connection(f"{URL}&prefetch_count=3")
    other = Connection(URL)
    try:
        capped.publish(queue, [b"c"] * 20)
        got = capped.fetch(queue, 50, 5.0)
        assert 1 <= len(got) <= 3
        time.sleep(0.3)
        assert len(drain(other, queue, 20 - len(got), timeout=10)) == 20 - len(got)
        capped.ack(got)
    finally:
        capped.close()
        other.close()


def test_delays_arrive_in_order_and_not_early(conn: Connection, queue: str) -> None:
    started = time.monotonic()
    conn.publish(queue, [b"d2"], delay=2.0)
    conn.publish(queue, [b"d1"], delay=1.0)
    conn.publish(queue, [b"now"])
    got: list[tuple[bytes, float]] = []
    while len(got) < 3 and time.monotonic() - started < 10:
        for d in conn.fetch(queue, 10, 0.2):
            got.append((d.body, time.monotonic() - started))
            conn.ack([d])
    assert [b for b, _ in got] == [b"now", b"d1", b"d2"]
    assert got[1][1] >= 0.95 and got[2][1] >= 1.95
    assert got[2][1] < 5
    delete_queues(delay_queue_name(queue, 1000), delay_queue_name(queue, 2000))


def test_delay_queue_arguments(conn: Connection, queue: str) -> None:
    assert delay_ms(1.5) == 1500 and delay_ms(0.0001) == 10 and delay_ms(12.34) == 12400
    conn.publish(queue, [b"x"], delay=1.5)
    rconn, ch = raw_channel()
    try:
        ok = ch.queue_declare(delay_queue_name(queue, 1500), passive=True)  # type: ignore[attr-defined]
        assert ok.method.message_count == 1
        assert conn.size(queue) == 0  # delayed messages are not counted until due
        assert conn.purge(queue) == 1  # purge also empties this connection's delay queues
        ok = ch.queue_declare(delay_queue_name(queue, 1500), passive=True)  # type: ignore[attr-defined]
        assert ok.method.message_count == 0
    finally:
        ch.queue_delete(delay_queue_name(queue, 1500))  # type: ignore[attr-defined]
        rconn.close()


def test_delayed_requeue_keeps_priority(conn: Connection, queue: str) -> None:
    first = Connection(URL)
    try:
        first.publish(queue, [b"high"], priority=9)
        got = drain(first, queue, 1, ack=False)
        assert first.requeue(got, delay=0.5) == 1
    finally:
        first.close()  # its consumer must not take "low" below
    conn.publish(queue, [b"low"], priority=1)
    time.sleep(1.2)  # both wait in the main queue now
    taker = Connection(URL)
    try:
        order = [d.body for d in drain(taker, queue, 2, batch=1)]
    finally:
        taker.close()
    assert order == [b"high", b"low"]
    delete_queues(delay_queue_name(queue, 500))


def test_priorities_with_batches(conn: Connection, queue: str) -> None:
    for p in (0, 3, 7, 10, 200):  # 200 is capped at max_priority 10 by RabbitMQ
        conn.publish(queue, [f"p{p}-{i}".encode() for i in range(3)], priority=p)
    got = [d.body.decode() for d in drain(conn, queue, 15, batch=1)]
    prios = [int(b[1:].split("-")[0]) for b in got]
    assert [min(p, 10) for p in prios] == sorted((min(p, 10) for p in prios), reverse=True)


def test_size_and_purge_of_unknown_queue(conn: Connection) -> None:
    name = fresh_queue_name("cq-rmq-none")
    assert conn.size(name) == 0
    assert conn.purge(name) == 0
    assert conn.publish(fresh_queue_name("cq-rmq-gone") , []) == 0  # nothing to publish: no declare


def test_acks_requeues_and_publishes_from_many_threads(conn: Connection, queue: str) -> None:
    total = 2000
    seen: Counter[bytes] = Counter()
    lock = threading.Lock()
    errors: list[BaseException] = []
    fetched: list = []
    fetched_cond = threading.Condition()
    done = threading.Event()

    def publisher(p: int) -> None:
        try:
            for start in range(0, total // 4, 10):
                conn.publish(queue, [f"{p}-{i}".encode() for i in range(start, start + 10)])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def acker() -> None:  # acks (and once in a while requeues) what the fetcher took
        try:
            requeued = 0
            while not done.is_set():
                with fetched_cond:
                    fetched_cond.wait_for(lambda: fetched or done.is_set(), 0.2)
                    batch = list(fetched)
                    fetched.clear()
                if batch and requeued < 50:
                    conn.requeue(batch[:1])
                    requeued += 1
                    batch = batch[1:]
                if batch:
                    conn.ack(batch)
                    with lock:
                        seen.update(d.body for d in batch)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=publisher, args=(p,)) for p in range(4)] + [threading.Thread(target=acker)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with lock:
            if len(seen) >= total:
                break
        got = conn.fetch(queue, 30, 0.2)
        with fetched_cond:
            fetched.extend(got)
            fetched_cond.notify()
    done.set()
    for t in threads:
        t.join()
    assert not errors, errors
    assert set(seen) == {f"{p}-{i}".encode() for p in range(4) for i in range(total // 4)}
    assert sum(c - 1 for c in seen.values()) == 0
    assert conn.size(queue) == 0


def test_close_returns_buffered_and_fetched_messages(queue: str) -> None:
    taker = Connection(URL)
    taker.publish(queue, [f"b{i}".encode() for i in range(10)])
    got = taker.fetch(queue, 4, 5.0)
    assert len(got) >= 1
    taker.close()
    with pytest.raises(BrokerError):
        taker.broker.callq_publish(queue, [b"after close"], 0.0, None)
    other = Connection(URL)
    try:
        back = drain(other, queue, 10)
        assert len(back) == 10
        assert any(d.redelivered for d in back)
    finally:
        other.close()
