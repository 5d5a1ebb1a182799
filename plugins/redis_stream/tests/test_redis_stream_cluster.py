"""callq-redis-stream on a local 6-node Redis Cluster (contract, kill -9, a master killed mid-run)
and through Sentinel."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from callq.broker import Connection
from callq.testing import BrokerContract, fresh_queue_name
from callq.testing.crash import (
    publish_calls,
    run_crash_test,
    start_worker,
    stop_workers,
    watch_failover,
)
from callq_redis.local import LocalCluster, LocalSentinelGroup

pytestmark = pytest.mark.slow

SCHEME = "redis+stream+cluster"


class TestRedisStreamClusterContract(BrokerContract):
    wait_margin = 5.0

    @pytest.fixture
    def broker_url(self, redis_cluster: LocalCluster) -> str:
        return redis_cluster.url(scheme=SCHEME, lease=2, prefix="cqsc-contract")


def test_streams_of_different_queues_spread_over_shards(redis_cluster: LocalCluster) -> None:
    prefix = f"cqsc-{uuid.uuid4().hex[:8]}"
    queues = [fresh_queue_name() for _ in range(8)]
    conn = Connection(redis_cluster.url(scheme=SCHEME, prefix=prefix))
    try:
        for q in queues:
            conn.publish(q, [b"x"])
            assert [d.body for d in conn.fetch(q, 1, 1.0)] == [b"x"]
        assert len({redis_cluster.master_of_key(f"{prefix}:s:{q}") for q in queues}) >= 2
    finally:
        for q in queues:
            conn.purge(q)
        conn.close()


def test_kill_9_twice_on_the_cluster_loses_nothing(redis_cluster: LocalCluster, tmp_path: Path) -> None:
    url = redis_cluster.url(scheme=SCHEME, lease=3, prefix=f"cqsc-{uuid.uuid4().hex[:8]}")
    report = run_crash_test(url, calls=3000, kills=2, workdir=tmp_path)
    print(f"redis stream cluster: {report}")
    assert report.lost == 0, report
    assert report.ran_unique == 3000


def test_master_killed_mid_run_workers_carry_on(redis_cluster: LocalCluster, tmp_path: Path) -> None:
    prefix, queue, calls = f"cqsc-{uuid.uuid4().hex[:8]}", fresh_queue_name("cq-sfailover"), 2000
    url = redis_cluster.url(scheme=SCHEME, lease=3, prefix=prefix, wait=1)
    master = redis_cluster.master_of_key(f"{prefix}:s:{queue}")
    replica = redis_cluster.replica_of(master)
    conn = Connection(url)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        publish_calls(conn, queue, calls)
        workers = [start_worker(url, queue, tmp_path, 8, n) for n in range(2)]
        report = watch_failover(workers, tmp_path, calls, lambda: redis_cluster.kill(master))
        print(f"stream cluster failover: {report}")
        assert not report.lost, report.lost[:20]
        assert redis_cluster.master_of_key(f"{prefix}:s:{queue}") == replica
    finally:
        stop_workers(workers)
        conn.close()
        redis_cluster.rejoin(master)


def test_round_trip_through_sentinel(redis_sentinel: LocalSentinelGroup) -> None:
    conn = Connection(redis_sentinel.url(scheme="redis+stream+sentinel", prefix=f"cqss-{uuid.uuid4().hex[:8]}"))
    queue = fresh_queue_name()
    try:
        conn.publish(queue, [b"a", b"b"])
        got = conn.fetch(queue, 5, 1.0)
        assert sorted(d.body for d in got) == [b"a", b"b"]
        conn.ack(got)
        assert conn.size(queue) == 0
        _, port = conn.broker.client.connection_pool.get_master_address()
        assert int(port) == redis_sentinel.master_port()
    finally:
        conn.close()
