"""What is specific to Kafka: watermark commits, rebalances, URLs, topics, purge."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from kafka import KafkaConsumer, TopicPartition

from callq.broker import Connection, Delivery
from callq.errors import BrokerError, ConfigError
from callq.testing import fresh_queue_name
from callq.testing.contract import drain
from callq.url import BrokerURL
from callq_kafka.assignor import assign_partitions
from callq_kafka.offsets import PartitionLog
from callq_kafka.params import parse_api_version, parse_hosts
from callq_kafka.testing import Server

# --- pure parts -----------------------------------------------------------------------------------


def test_watermark_moves_only_past_settled_offsets() -> None:
    log = PartitionLog()
    for offset in range(10, 15):
        assert log.delivered(offset)
    assert log.delivered(11) is False, "in flight already"
    assert log.mark == 10 and log.busy
    log.settle(12)
    log.settle(11)
    assert log.mark == 10, "10 is not settled: nothing past it may be committed"
    log.settle(10)
    assert log.mark == 13
    log.settle(14)
    assert log.mark == 13
    log.settle(13)
    assert log.mark == 15 and not log.busy
    assert log.settle(99) is False, "an offset we never delivered is not ours"
    assert log.delivered(12) is False, "settled already: not delivered again"
    assert log.next_fetch == 15


def test_watermark_with_gaps_in_offsets() -> None:
    log = PartitionLog()
    for offset in (3, 7, 8):  # compacted or transactional topics skip offsets
        log.delivered(offset)
    log.settle(7)
    assert log.mark == 3
    log.settle(3)
    assert log.mark == 8
    log.settle(8)
    assert log.mark == 9


def test_assignor_keeps_busy_partitions_within_balanced_shares() -> None:
    got = assign_partitions(range(6), {"b": {0, 1, 2}, "a": set()})
    assert got == {"a": [3, 4, 5], "b": [0, 1, 2]}
    got = assign_partitions(range(4), {"a": set(), "b": set()})
    assert sorted(len(v) for v in got.values()) == [2, 2]
    assert sorted(p for v in got.values() for p in v) == [0, 1, 2, 3]
    # a member busy on every partition keeps only its share: a new member is never starved
    got = assign_partitions(range(4), {"busy": {0, 1, 2, 3}, "new": set()})
    assert len(got["busy"]) == 2 and len(got["new"]) == 2
    # a partition claimed twice (a member kicked out and back) goes to one member only
    got = assign_partitions(range(2), {"a": {0}, "b": {0}})
    assert sorted(p for v in got.values() for p in v) == [0, 1]
    # more members than partitions: some get nothing (partitions bound the parallelism)
    got = assign_partitions(range(2), {"a": set(), "b": set(), "c": {1}})
    assert sorted(len(v) for v in got.values()) == [0, 1, 1] and got["c"] == [1]


def test_url_hosts_and_versions() -> None:
    assert parse_hosts(BrokerURL.parse("kafka://h1:9092/?bootstrap=h2:9093,h3")) == ["h1:9092", "h2:9093", "h3:9092"]
    assert parse_hosts(BrokerURL.parse("kafka://h1,h2:9093/")) == ["h1:9093", "h2:9093"]
    assert parse_hosts(BrokerURL.parse("kafka://h1/")) == ["h1:9092"]
    assert parse_hosts(BrokerURL.parse("kafka:///")) == ["localhost:9092"]
    assert parse_api_version(BrokerURL.parse("kafka://h/?api_version=0.9")) == (0, 9)
    assert parse_api_version(BrokerURL.parse("kafka://h/")) is None


@pytest.mark.parametrize("url, words", [
    ("kafka://h:9092/?nope=1", "unknown parameter"),
    ("kafka://h:9092/?api_version=new", "api_version"),
    ("kafka://h:9092/?partitions=0", "partitions must be >= 1"),
    ("kafka://h:9092/?api_version=0.9&partitions=8", "no CreateTopics"),
    ("kafka://user:secret@h:9092/", "no user or password"),
    ("kafka://h:9092/?bootstrap=b@d:1", "bad bootstrap host"),
    ("kafka://h:9092/?acks=0", "acks"),
])
def test_bad_urls_are_config_errors(url: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as info:
        Connection(url)
    assert "secret" not in str(info.value)


def test_no_server_is_a_broker_error_with_a_hint() -> None:
    started = time.monotonic()
    with pytest.raises(BrokerError, match="cannot connect to Kafka.*api_version=0.9"):
        Connection("kafka://127.0.0.1:1/?connect_timeout=1")
    assert time.monotonic() - started < 15


def test_auto_api_version_detects_kafka_09(kafka09: Server) -> None:
    conn = Connection(f"kafka://{kafka09.bootstrap}/?connect_timeout=2")
    try:
        assert conn.broker.api_version == (0, 9)  # type: ignore[attr-defined]
        queue = fresh_queue_name("cq-kafka-auto")
        conn.publish(queue, [b"x"])
        assert [d.body for d in drain(conn, queue, 1)] == [b"x"]
    finally:
        conn.close()
    with pytest.raises(ConfigError, match="no CreateTopics"):
        Connection(f"kafka://{kafka09.bootstrap}/?connect_timeout=2&partitions=8")


def test_bad_queue_name_is_a_config_error(tansu: Server) -> None:
    conn = Connection(tansu.url_with())
    try:
        with pytest.raises(ConfigError, match="not a valid Kafka topic name"):
            conn.publish("no spaces/here", [b"x"])
    finally:
        conn.close()


# --- against the servers -------------------------------------------------------------------------


def committed(server: Server, queue: str, partitions: set[int]) -> dict[int, int | None]:
    raw = KafkaConsumer(bootstrap_servers=server.bootstrap, group_id=f"callq.{queue}", enable_auto_commit=False,
                        **({"api_version": (0, 9)} if server.name == "kafka09" else {}))
    try:
        return {p: raw.committed(TopicPartition(queue, p)) for p in partitions}
    finally:
        raw.close()


def test_commit_is_the_per_partition_watermark(server: Server) -> None:
    queue = fresh_queue_name("cq-kafka-wm")
    conn = Connection(server.url_with())
    try:
        conn.publish(queue, [f"w{i}".encode() for i in range(40)])
        got = drain(conn, queue, 40, ack=False)
        assert len(got) == 40
        by_part: dict[int, list[Delivery]] = {}
        for d in got:
            by_part.setdefault(d.tag[0], []).append(d)
        # in each partition leave its second delivery unsettled; settle all the others
        held = {p: ds[1] for p, ds in by_part.items() if len(ds) > 1}
        conn.ack([d for d in got if d not in held.values()])
        conn.heartbeat()
        marks = committed(server, queue, set(by_part))
        for p, ds in by_part.items():
            expect = held[p].tag[1] if p in held else ds[-1].tag[1] + 1
            assert marks[p] == expect, (p, marks[p], expect)
        conn.ack(list(held.values()))
        conn.heartbeat()
        marks = committed(server, queue, set(by_part))
        assert marks == {p: ds[-1].tag[1] + 1 for p, ds in by_part.items()}
    finally:
        conn.close()


def test_rebalance_keeps_in_flight_and_loses_nothing(server: Server) -> None:
    """Two consumers; the first holds messages of two partitions while the second joins, then leaves."""
    queue = fresh_queue_name("cq-kafka-rb")
    url = server.url_with()
    producer, first, second = Connection(url), Connection(url), Connection(url)
    bodies = [f"r{i}".encode() for i in range(200)]
    seen: Counter[bytes] = Counter()
    try:
        producer.publish(queue, bodies)
        taken = drain(first, queue, 60, ack=False, batch=20)
        assert len(taken) == 60
        kept = sorted({d.tag[0] for d in taken})[:2]  # its share of 4 partitions with 2 consumers
        holding = [d for d in taken if d.tag[0] in kept]
        done = [d for d in taken if d.tag[0] not in kept]
        first.ack(done)
        seen.update(d.body for d in done)
        # the second joins and gets the other two partitions; the first keeps the ones it is busy on
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(seen) < len(bodies) // 3:
            first.heartbeat()
            got = second.fetch(queue, 50, 0.5)
            assert {d.tag[0] for d in got}.isdisjoint(kept), "a live consumer's busy partition moved"
            second.ack(got)
            seen.update(d.body for d in got)
        assert len(seen) >= len(bodies) // 3, "the second consumer got no share"
        assert not {d.body for d in holding} & set(seen), "a live consumer's in-flight message was redelivered"
        first.ack(holding)
        seen.update(d.body for d in holding)
        first.close()  # leaves: its settled offsets are committed, its partitions go to the second
        rest = drain(second, queue, 200 - len(seen), timeout=30)
        seen.update(d.body for d in rest)
        assert set(seen) == set(bodies), f"lost {len(set(bodies) - set(seen))}"
        assert max(seen.values()) == 1, "a settled message came back after a clean rebalance"
    finally:
        for conn in (producer, first, second):
            conn.close()


def test_purge_skips_waiting_messages_for_the_group(server: Server) -> None:
    queue = fresh_queue_name("cq-kafka-purge")
    conn = Connection(server.url_with())
    try:
        conn.publish(queue, [b"p"] * 30)
        assert conn.purge(queue) == 30
        conn.publish(queue, [b"after"])
        assert [d.body for d in drain(conn, queue, 1)] == [b"after"]
        assert conn.fetch(queue, 10, 0.5) == []
        assert conn.size(queue) == 0
    finally:
        conn.close()


def test_size_counts_the_groups_lag(kafka09: Server) -> None:
    """On Apache Kafka the lag is exact while nothing is in flight (Tansu's end offsets are not)."""
    queue = fresh_queue_name("cq-kafka-size")
    conn = Connection(kafka09.url_with())
    try:
        for _ in range(3):
            conn.publish(queue, [b"s"] * 5)
        assert conn.size(queue) == 15
        got = drain(conn, queue, 4, batch=4)
        conn.heartbeat()
        assert conn.size(queue) == 15 - len(got)
    finally:
        conn.close()


def test_partitions_param_creates_topics_with_that_many(tansu: Server) -> None:
    queue = fresh_queue_name("cq-kafka-parts")
    conn = Connection(tansu.url_with(partitions=3))
    try:
        conn.publish(queue, [b"x"])
        raw = KafkaConsumer(bootstrap_servers=tansu.bootstrap)
        try:
            assert raw.partitions_for_topic(queue) == {0, 1, 2}
        finally:
            raw.close()
    finally:
        conn.close()
