"""callq-redis through Redis Sentinel: a local master, a replica and three sentinels; the
master is killed mid-run and the workers reconnect to the promoted replica."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from callq.broker import Connection
from callq.errors import ConfigError
from callq.testing import drain, fresh_queue_name
from callq.testing.crash import publish_calls, start_worker, stop_workers, watch_failover
from callq_redis.local import LocalSentinelGroup

pytestmark = pytest.mark.slow


def test_sentinel_url_needs_a_service_name(redis_sentinel: LocalSentinelGroup) -> None:
    with pytest.raises(ConfigError, match="service name"):
        Connection(f"redis+sentinel://127.0.0.1:{redis_sentinel.sentinel_ports[0]}/")
    with pytest.raises(ConfigError, match="database number"):
        Connection(f"redis+sentinel://127.0.0.1:{redis_sentinel.sentinel_ports[0]}/svc/x")
    with pytest.raises(ConfigError, match="sentinel_password is for"):
        Connection("redis://127.0.0.1:6379/0?sentinel_password=x")


@pytest.mark.parametrize("mode", ["reliable", "lmove"])
def test_round_trip_through_sentinel(redis_sentinel: LocalSentinelGroup, mode: str) -> None:
    conn = Connection(redis_sentinel.url(mode=mode, prefix=f"cqs-{uuid.uuid4().hex[:8]}", lease=2))
    queue = fresh_queue_name()
    try:
        conn.publish(queue, [b"a", b"b"])
        conn.publish(queue, [b"c"], delay=0.2)
        assert sorted(d.body for d in drain(conn, queue, 3, timeout=5)) == [b"a", b"b", b"c"]
        assert conn.size(queue) == 0
        host, port = conn.broker.client.connection_pool.get_master_address()
        assert int(port) == redis_sentinel.master_port()
    finally:
        conn.close()


def test_master_killed_mid_run_workers_follow_the_new_master(redis_sentinel: LocalSentinelGroup,
                                                             tmp_path: Path) -> None:
    queue, calls = fresh_queue_name("cq-sentinel"), 2000
    url = redis_sentinel.url(lease=3, prefix=f"cqs-{uuid.uuid4().hex[:8]}", wait=1)
    old = redis_sentinel.master_port()
    conn = Connection(url)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        publish_calls(conn, queue, calls)
        workers = [start_worker(url, queue, tmp_path, 8, n) for n in range(2)]
        report = watch_failover(workers, tmp_path, calls, lambda: redis_sentinel.kill(old))
        new = redis_sentinel.master_port()
        print(f"sentinel failover, master {old} killed, new master {new}: {report}")
        assert not report.lost, report.lost[:20]
        assert new != old
        warnings = "".join(p.read_text() for p in tmp_path.glob("worker-*.stderr"))
        assert "succeeded again" in warnings  # the retry path logged the way back
    finally:
        stop_workers(workers)
        conn.close()
        if redis_sentinel.procs[old].poll() is not None:
            redis_sentinel.restart(old)  # the sentinels make it a replica of the new master
