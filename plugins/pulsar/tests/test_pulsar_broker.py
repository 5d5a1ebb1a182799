"""What is specific to callq-pulsar: URLs, negative acks, dead letters, prefetch, threads, hangs."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pulsar
import pytest

from callq.broker import Connection
from callq.errors import ConfigError
from callq.testing import drain, fresh_queue_name


@pytest.mark.parametrize("bad, words", [
    ("pulsar://127.0.0.1:1/?nope=1", "unknown parameter"),
    ("pulsar://127.0.0.1:1/?prefetch=0", "prefetch must be >= 1"),
    ("pulsar://127.0.0.1:1/?batch=x", "batch"),
    ("pulsar://127.0.0.1:1/?client_log=file", "client_log"),
    ("pulsar://127.0.0.1:1/only-tenant", "/tenant/namespace"),
    ("pulsar://127.0.0.1:1/a/b/c", "/tenant/namespace"),
    ("pulsar://127.0.0.1:1/?subscription=a/b", "subscription"),
    ("pulsar://user:secret@127.0.0.1:1/", "authentication"),
])
def test_bad_urls_are_refused_with_a_clear_error(bad: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as info:
        Connection(bad)
    assert "secret" not in str(info.value)


def test_bad_queue_name_is_refused(url: str) -> None:
    conn = Connection(url)
    try:
        with pytest.raises(ConfigError, match="not a valid Pulsar topic name"):
            conn.publish("a/b", [b"x"])
    finally:
        conn.close()


def test_capabilities_follow_the_url(pulsar_server: str) -> None:
    conn = Connection(f"{pulsar_server}/public/default?redelivery=12")
    try:
        caps = conn.capabilities
        assert (caps.acks, caps.distributed, caps.backlog, caps.persistent) == (True, True, True, True)
        assert (caps.native_delay, caps.priority, caps.shared_state, caps.exact_size) == (False,) * 4
        assert caps.redelivery_timeout == 12
        assert conn.size("anything") == 0
    finally:
        conn.close()


def test_server_ignores_deliver_after_so_native_delay_is_not_claimed(pulsar_server: str) -> None:
    """pulsar-lite 0.2 delivers a deliver_after message at once; if this starts failing, the
    server learned delays and native_delay could be claimed (after the contract passes)."""
    client = pulsar.Client(pulsar_server, logger=None)
    topic = f"persistent://public/default/{fresh_queue_name('cq-delay')}"
    try:
        consumer = client.subscribe(topic, "probe", consumer_type=pulsar.ConsumerType.Shared)
        producer = client.create_producer(topic)
        started = time.monotonic()
        producer.send(b"later", deliver_after=dt.timedelta(seconds=3))
        msg = consumer.receive(10_000)
        consumer.acknowledge(msg)
        assert time.monotonic() - started < 1.5, "deliver_after honoured: revisit native_delay"
    finally:
        client.close()


def test_requeue_comes_back_marked_redelivered(url: str) -> None:
    conn = Connection(url)
    queue = fresh_queue_name()
    try:
        conn.publish(queue, [b"again"])
        first = drain(conn, queue, 1, ack=False)
        assert [d.redelivered for d in first] == [False]
        conn.requeue(first)
        second = drain(conn, queue, 1)
        assert [d.body for d in second] == [b"again"]
        assert second[0].redelivered
    finally:
        conn.close()


def test_dead_letter_policy_moves_a_message_after_max_redeliveries(url: str) -> None:
    conn = Connection(url + "&max_redeliveries=2")
    queue = fresh_queue_name()
    try:
        conn.publish(queue, [b"poison"])
        rounds = 0
        while True:
            got = conn.fetch(queue, 1, 3.0)
            if not got:
                break
            rounds += 1
            conn.requeue(got)
        assert rounds == 3  # first delivery + 2 redeliveries
        dead = drain(conn, f"{queue}.dlq", 1)
        assert [d.body for d in dead] == [b"poison"]
    finally:
        conn.close()


def test_prefetch_bounds_what_one_consumer_holds(url: str) -> None:
    """A consumer that fetched 1 keeps about `prefetch` more: the rest goes to others."""
    slow = Connection(url + "&prefetch=5")
    fast = Connection(url + "&prefetch=5")
    queue = fresh_queue_name()
    try:
        slow.publish(queue, [f"m{i}".encode() for i in range(60)])
        held = slow.fetch(queue, 1, 5.0)
        assert len(held) == 1
        time.sleep(0.3)
        others = drain(fast, queue, 60, timeout=2)
        assert len(others) >= 60 - 1 - 5 - 1, len(others)  # the client may ask for one more
        rest = drain(slow, queue, 60 - 1 - len(others), timeout=5)
        slow.ack(held)
        assert Counter(d.body for d in held + others + rest) == Counter(f"m{i}".encode() for i in range(60))
    finally:
        slow.close()
        fast.close()


@pytest.mark.parametrize("batch", [1, 50])
def test_one_connection_is_safe_from_many_threads(url: str, batch: int) -> None:
    """The C++ client has its own threads; callq calls it from several threads at once."""
    conn = Connection(url + f"&batch={batch}")
    queue = fresh_queue_name()
    seen: Counter[bytes] = Counter()
    lock = threading.Lock()
    errors: list[BaseException] = []
    done = threading.Event()

    def produce(p: int) -> None:
        try:
            for start in range(0, 1000, 50):
                conn.publish(queue, [f"p{p}-{i}".encode() for i in range(start, start + 50)])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def consume() -> None:
        try:
            while not done.is_set():
                got = conn.fetch(queue, 20, 0.2)
                if got:
                    conn.ack(got)
                    with lock:
                        seen.update(d.body for d in got)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=consume) for _ in range(6)]
    threads += [threading.Thread(target=produce, args=(p,)) for p in range(3)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while sum(seen.values()) < 3000 and time.monotonic() < deadline and not errors:
            time.sleep(0.05)
    finally:
        done.set()
        for t in threads:
            t.join(30)
        conn.close()
    assert not errors, errors
    assert set(seen) == {f"p{p}-{i}".encode() for p in range(3) for i in range(1000)}
    assert max(seen.values()) == 1


_FROZEN_CHILD = r"""
import sys, time
from callq.broker import Connection
conn = Connection(sys.argv[1])
got = []
while len(got) < 5:
    got += conn.fetch(sys.argv[2], 5 - len(got), 1.0)
print(len(got), flush=True)
time.sleep(600)
"""


def test_frozen_consumer_messages_come_back_within_redelivery(url: str) -> None:
    """SIGSTOP (a hung process or a cut-off host) keeps the TCP connection open: only the
    server's keep-alive notices. The test server pings every 2 s (see callq_pulsar.testing)."""
    conn = Connection(url)
    queue = fresh_queue_name()
    child = None
    try:
        conn.publish(queue, [f"f{i}".encode() for i in range(5)])
        child = subprocess.Popen([sys.executable, "-c", _FROZEN_CHILD, url, queue],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdout.readline().strip() == "5"
        os.kill(child.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        back = drain(conn, queue, 5, timeout=conn.capabilities.redelivery_timeout + 2)
        assert sorted(d.body for d in back) == [f"f{i}".encode() for i in range(5)]
        print(f"back {time.monotonic() - stopped:.1f}s after SIGSTOP")
    finally:
        if child is not None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
        conn.close()


def test_purge_from_a_connection_that_never_fetched_leaves_no_consumer_behind(url: str) -> None:
    """A producer that purges must not keep a consumer prefetching messages nobody fetches."""
    producer, worker = Connection(url), Connection(url)
    queue = fresh_queue_name()
    try:
        producer.publish(queue, [b"old"] * 5)
        assert producer.purge(queue) == 5
        producer.publish(queue, [b"new"] * 30)
        got = drain(worker, queue, 30, timeout=5)
        assert [d.body for d in got] == [b"new"] * 30
    finally:
        producer.close()
        worker.close()
