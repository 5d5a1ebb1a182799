"""callq-redis on a local 6-node Redis Cluster (3 masters, 3 replicas): URLs, hash tags,
the contract suite, kill -9 of workers, a master killed mid-run, and the WAIT option."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from redis.cluster import RedisCluster, key_slot

from callq.broker import Connection
from callq.errors import BrokerError, ConfigError
from callq.testing import BrokerContract, drain, fresh_queue_name
from callq.testing.crash import (
    publish_calls,
    run_crash_test,
    start_worker,
    stop_workers,
    watch_failover,
)
from callq_redis.local import LocalCluster

pytestmark = pytest.mark.slow


def _prefix() -> str:
    return f"cqc-{uuid.uuid4().hex[:8]}"


def _raw(cluster: LocalCluster) -> RedisCluster:
    return RedisCluster(host="127.0.0.1", port=cluster.ports[0])


def test_cluster_url_errors(redis_cluster: LocalCluster) -> None:
    with pytest.raises(ConfigError, match="only database 0"):
        Connection(redis_cluster.url().replace("/?", "/3?"))
    with pytest.raises(ConfigError, match="hosts must be host:port"):
        Connection(redis_cluster.url().replace("hosts=", "hosts=nohost,"))
    with pytest.raises(ConfigError, match="hosts is for"):
        Connection("redis://127.0.0.1:6379/0?hosts=127.0.0.1:6380")
    with pytest.raises(ConfigError, match="braces"):
        Connection(redis_cluster.url(prefix="a{b}"))
    with pytest.raises(BrokerError, match="cannot read the cluster layout"):
        Connection("redis+cluster://127.0.0.1:1/?retry=0")


def test_every_key_of_a_queue_shares_a_slot_and_queues_spread(redis_cluster: LocalCluster) -> None:
    prefix = _prefix()
    conn = Connection(redis_cluster.url(prefix=prefix, lease=2))
    raw = _raw(redis_cluster)
    queues = [fresh_queue_name() for _ in range(8)]
    try:
        for q in queues:
            conn.publish(q, [b"now", b"later"])
            conn.publish(q, [b"delayed"], delay=30)
            conn.publish(q, [b"urgent", b"urgent2"], priority=5)
            held = conn.fetch(q, 1, 1.0)  # in-flight hash + consumer registry
            assert len(held) == 1
        conn.heartbeat()
        slots: dict[str, set[int]] = {}
        for key in raw.scan_iter(match=f"{prefix}:*"):
            k = key.decode()
            queue = k[k.index("{") + 1:k.index("}")]
            slots.setdefault(queue, set()).add(key_slot(key))
        assert set(slots) == set(queues)
        kinds = {k.decode().split("}:")[1].split(":")[0] for k in raw.scan_iter(match=f"{prefix}:*")}
        assert {"q", "qp5", "delayed", "seq", "consumers", "inflight"} <= kinds
        assert all(len(s) == 1 for s in slots.values()), slots
        masters = {redis_cluster.master_of_key(f"{prefix}:{{{q}}}:q") for q in queues}
        assert len(masters) >= 2, "8 queues all on one shard"
    finally:
        for q in queues:
            conn.purge(q)
        conn.close()
        raw.close()


class TestRedisClusterReliableContract(BrokerContract):
    wait_margin = 5.0

    @pytest.fixture
    def broker_url(self, redis_cluster: LocalCluster) -> str:
        return redis_cluster.url(mode="reliable", lease=2, prefix="cqc-contract")


class TestRedisClusterLmoveContract(BrokerContract):
    wait_margin = 5.0

    @pytest.fixture
    def broker_url(self, redis_cluster: LocalCluster) -> str:
        return redis_cluster.url(mode="lmove", lease=2, prefix="cqc-contract-lm")


def test_kill_9_twice_on_the_cluster_loses_nothing(redis_cluster: LocalCluster, tmp_path: Path) -> None:
    report = run_crash_test(redis_cluster.url(lease=3, prefix=_prefix()), calls=3000, kills=2, workdir=tmp_path)
    print(f"redis cluster reliable: {report}")
    assert report.lost == 0, report
    assert report.ran_unique == 3000


def test_master_killed_mid_run_workers_carry_on(redis_cluster: LocalCluster, tmp_path: Path) -> None:
    """kill -9 of the master holding the queue: its replica takes over, two workers carry on,
    every call published before (and replicated: wait=1) runs."""
    prefix, queue, calls = _prefix(), fresh_queue_name("cq-failover"), 3000
    url = redis_cluster.url(lease=3, prefix=prefix, wait=1)
    master = redis_cluster.master_of_key(f"{prefix}:{{{queue}}}:q")
    replica = redis_cluster.replica_of(master)
    conn = Connection(url)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        publish_calls(conn, queue, calls)
        workers = [start_worker(url, queue, tmp_path, 8, n) for n in range(2)]
        report = watch_failover(workers, tmp_path, calls, lambda: redis_cluster.kill(master))
        print(f"cluster failover, master {master} killed, replica {replica} took over: {report}")
        assert not report.lost, report.lost[:20]
        assert redis_cluster.master_of_key(f"{prefix}:{{{queue}}}:q") == replica
    finally:
        stop_workers(workers)
        conn.close()
        redis_cluster.rejoin(master)


def _cut_replication(cluster: LocalCluster, master: int, replica: int) -> None:
    """Stop replication from ``master`` to ``replica`` (and keep it stopped): the replica
    authenticates as a user that does not exist, then its link is killed."""
    with cluster.client(replica) as r:
        r.config_set("masteruser", "callq-no-such-user")
        r.config_set("masterauth", "x")
    with cluster.client(master) as m:
        m.execute_command("CLIENT", "KILL", "TYPE", "replica")
    deadline = time.monotonic() + 10
    while True:
        with cluster.client(replica) as r:
            if r.info("replication").get("master_link_status") != "up":
                return
        if time.monotonic() > deadline:
            raise RuntimeError("replication link still up")
        time.sleep(0.05)


def _fail_over_to(cluster: LocalCluster, master: int, replica: int) -> None:
    cluster.kill(master)
    with cluster.client(replica) as r:
        r.config_set("masterauth", "")
        r.config_set("masteruser", "")
    deadline = time.monotonic() + 30
    while True:
        with cluster.client(replica) as r:
            if r.info("replication")["role"] == "master":
                break
        if time.monotonic() > deadline:
            raise RuntimeError(f"replica {replica} not promoted:\n{cluster.log_tail(replica)}")
        time.sleep(0.1)
    cluster.wait_ok(skip=(master,))


def test_unreplicated_publishes_are_lost_on_failover_and_wait_refuses_them(
        redis_cluster: LocalCluster) -> None:
    """Replication is asynchronous: a publish acknowledged by the master but not yet on the
    replica is lost when the replica takes over. ``wait=1`` does not return success for such
    a publish: it raises BrokerError after ``wait_timeout``."""
    prefix, queue = _prefix(), fresh_queue_name("cq-lag")
    plain = Connection(redis_cluster.url(prefix=prefix, retry=30))
    safe = Connection(redis_cluster.url(prefix=prefix, wait=1, wait_timeout=2, retry=30))
    master = redis_cluster.master_of_key(f"{prefix}:{{{queue}}}:q")
    replica = redis_cluster.replica_of(master)
    try:
        plain.publish(queue, [b"old"] * 50)
        safe.publish(queue, [b"replicated"])  # WAIT: the 51 messages are on the replica
        _cut_replication(redis_cluster, master, replica)
        plain.publish(queue, [b"unreplicated"] * 100)  # acknowledged by the master alone
        with pytest.raises(BrokerError, match="0 of 1 replica"):
            safe.publish(queue, [b"refused"])
        assert plain.size(queue) == 152
        _fail_over_to(redis_cluster, master, replica)
        bodies = Counter(d.body for d in drain(plain, queue, 152, timeout=5))
        print(f"failover with the replication link cut: kept {dict(bodies)}; lost 100 plain publishes "
              "(acknowledged by the old master only) and the WAIT publish that raised")
        assert bodies == {b"old": 50, b"replicated": 1}
        # the wait=1 client still maps the slot to the dead master: it must find the promoted
        # one (which has no replica left, so WAIT refuses) rather than retry the dead node
        started = time.monotonic()
        with pytest.raises(BrokerError, match="0 of 1 replica"):
            safe.publish(queue, [b"after"])
        assert time.monotonic() - started < 10
    finally:
        plain.close()
        safe.close()
        with redis_cluster.client(replica) as r:
            r.config_set("masteruser", "")
            r.config_set("masterauth", "")
        redis_cluster.rejoin(master)


def test_wait_option_latency(redis_cluster: LocalCluster) -> None:
    """What ``wait=1`` costs per publish (one WAIT per publish, on the key's primary)."""
    prefix, queue = _prefix(), fresh_queue_name("cq-wait")
    master = redis_cluster.master_of_key(f"{prefix}:{{{queue}}}:q")
    results, waits = {}, {}
    for wait in (0, 1):
        conn = Connection(redis_cluster.url(prefix=prefix, wait=wait))
        try:
            conn.publish(queue, [b"warm"])
            before = _wait_calls(redis_cluster, master)
            best = float("inf")
            for _ in range(3):
                started = time.perf_counter()
                for _ in range(300):
                    conn.publish(queue, [b"x"])
                best = min(best, (time.perf_counter() - started) / 300)
            waits[wait] = _wait_calls(redis_cluster, master) - before
            results[wait] = best
            conn.purge(queue)
        finally:
            conn.close()
    print(f"publish latency on the cluster: wait=0 {results[0] * 1e6:.0f} us, wait=1 {results[1] * 1e6:.0f} us "
          f"({results[1] / results[0]:.2f}x)")
    assert waits == {0: 0, 1: 900}  # one WAIT per publish, on the primary that took it
    assert results[1] < 0.05


def _wait_calls(cluster: LocalCluster, port: int) -> int:
    with cluster.client(port) as r:
        stats = r.info("commandstats")
    return int(stats.get("cmdstat_wait", {}).get("calls", 0))
