"""What is specific to callq-mongo: URLs, leases, tokens, the claim index, the state store."""

from __future__ import annotations

import time
from pathlib import Path

import pymongo
import pytest

from callq.broker import Connection
from callq.errors import ConfigError
from callq.testing import drain, fresh_queue_name
from callq.testing.crash import run_crash_test


@pytest.mark.parametrize("bad, words", [
    ("mongodb://u:secret@127.0.0.1:1/db?nope=1", "nope"),
    ("mongodb://127.0.0.1:1/db?lease=0.5", "lease must be >= 1"),
    ("mongodb://127.0.0.1:1/db?poll=x", "poll"),
    ("mongodb://127.0.0.1:1/a.b", "not a valid database name"),
    ("mongodb://127.0.0.1:1/db?prefix=a.b", "prefix"),
    ("mongodb://127.0.0.1:1/db?maxPoolSize=-1", "maxpoolsize"),
])
def test_bad_urls_are_refused_with_a_clear_error(bad: str, words: str) -> None:
    with pytest.raises(ConfigError, match=f"(?i){words}") as info:
        Connection(bad)
    assert "secret" not in str(info.value)


def test_pymongo_options_pass_through(db_url: str) -> None:
    conn = Connection(f"{db_url}?maxPoolSize=3&lease=4&appname=mine")
    try:
        assert conn.broker.client.options.pool_options.max_pool_size == 3
        assert conn.broker.client.options.pool_options.metadata["application"]["name"] == "mine"
        assert conn.capabilities.redelivery_timeout == 4
        assert conn.heartbeat_interval == pytest.approx(0.8)
    finally:
        conn.close()


def test_expired_lease_comes_back_and_a_late_ack_does_not_delete_the_new_claim(db_url: str) -> None:
    url = f"{db_url}?lease=1&poll=0.02"
    slow, other = Connection(url), Connection(url)
    queue = fresh_queue_name()
    try:
        slow.publish(queue, [b"job"])
        held = drain(slow, queue, 1, ack=False)
        assert other.fetch(queue, 1, 0.3) == []  # under its lease
        time.sleep(1.1)  # no heartbeat: the lease runs out
        again = drain(other, queue, 1, ack=False)
        assert [d.body for d in again] == [b"job"] and again[0].redelivered
        slow.ack(held)  # too late: the message belongs to `other` now
        assert other.size(queue) == 0
        assert other.broker.col.count_documents({"q": queue}) == 1
        other.ack(again)
        assert other.broker.col.count_documents({"q": queue}) == 0
    finally:
        slow.close()
        other.close()


def test_heartbeat_extends_own_leases_and_frees_expired_ones(db_url: str) -> None:
    url = f"{db_url}?lease=1&poll=0.02"
    worker, dead = Connection(url), Connection(url)
    queue = fresh_queue_name()
    try:
        worker.publish(queue, [b"mine"])
        dead.publish(queue, [b"orphan"])
        mine = drain(worker, queue, 1, ack=False)
        orphan = drain(dead, queue, 1, ack=False)
        assert {mine[0].body, orphan[0].body} == {b"mine", b"orphan"}
        for _ in range(6):  # 1.5 s: past the lease for `dead`, never for `worker`
            time.sleep(0.25)
            recovered = worker.heartbeat()
            if recovered:
                assert recovered == 1
        assert worker.size(queue) == 1  # the orphan waits again, ours is still held
        back = drain(worker, queue, 1, ack=False)
        assert [d.body for d in back] == [orphan[0].body]
        worker.ack(mine + back)
    finally:
        worker.close()
        dead.close()


def test_delay_and_priority_together(db_url: str) -> None:
    conn = Connection(f"{db_url}?poll=0.02")
    queue = fresh_queue_name()
    try:
        conn.publish(queue, [b"urgent-later"], delay=1.0, priority=9)
        conn.publish(queue, [b"low-now"], priority=1)
        conn.publish(queue, [b"mid-now"], priority=5)
        assert conn.size(queue) == 3
        first = drain(conn, queue, 2, batch=1)
        assert [d.body for d in first] == [b"mid-now", b"low-now"]
        started = time.monotonic()
        assert [d.body for d in drain(conn, queue, 1, timeout=5)] == [b"urgent-later"]
        assert time.monotonic() - started > 0.5
    finally:
        conn.close()


def test_claim_query_uses_the_claim_index(db_url: str) -> None:
    conn = Connection(db_url)
    queue = fresh_queue_name()
    try:
        conn.publish(queue, [b"x"] * 50)
        plan = conn.broker.claim_cursor(queue, time.time(), 10).explain()
        winning = str(plan["queryPlanner"]["winningPlan"])
        assert "'IXSCAN'" in winning and "callq_claim" in winning and "COLLSCAN" not in winning, winning
        names = set(conn.broker.col.index_information())
        assert {"callq_claim", "callq_owner"} <= names
    finally:
        conn.close()


def test_a_resent_batch_is_stored_once(db_url: str) -> None:
    """publish makes the _ids, so resending after a lost reply cannot duplicate."""
    conn = Connection(db_url)
    queue = fresh_queue_name()
    try:
        docs = [{"_id": i, "q": queue, "b": b"x", "p": 0, "v": 0.0, "o": None, "t": None, "n": 0}
                for i in range(5)]
        conn.broker._insert(docs)
        conn.broker._insert(docs)
        assert conn.size(queue) == 5
    finally:
        conn.close()


def test_state_keys_expire_on_read_and_carry_a_ttl_index(db_url: str) -> None:
    """Expired keys are filtered on every read at once; the TTL index lets the server delete
    them later (mongod and SecantusDB 0.7 both sweep every 60 s: seen once by hand, not here)."""
    conn = Connection(db_url)
    try:
        st = conn.state
        st.put("gone", "1", ttl=0.3)
        st.put("kept", "1", ttl=300)
        time.sleep(0.4)
        assert st.get("gone") is None
        assert st.scan("") == {"kept": "1"}
        assert st.delete("gone") is False  # an expired key did not exist any more
        col = conn.broker.db["callq_state"]
        assert col.index_information()["callq_ttl"]["expireAfterSeconds"] == 0
    finally:
        conn.close()


def test_state_incr_turns_a_put_value_into_a_counter(db_url: str) -> None:
    conn = Connection(db_url)
    try:
        st = conn.state
        st.put("n", "41")
        assert st.incr("n") == 42
        assert st.get("n") == "42"
        assert st.incr("fresh", 3, ttl=0.3) == 3
        time.sleep(0.4)
        assert st.incr("fresh", 3, ttl=30) == 3  # expired counts as absent
        assert st.scan("") == {"n": "42", "fresh": "3"}
    finally:
        conn.close()


@pytest.mark.parametrize("first", ["publish", "fetch", "heartbeat", "size", "purge"])
def test_any_first_call_creates_the_indexes(db_url: str, first: str) -> None:
    client: pymongo.MongoClient = pymongo.MongoClient(db_url)
    conn = Connection(db_url)
    try:
        call = {"publish": lambda: conn.publish("q", [b"x"]), "fetch": lambda: conn.fetch("q", 1, 0.01),
                "heartbeat": conn.heartbeat, "size": lambda: conn.size("q"), "purge": lambda: conn.purge("q")}
        call[first]()
        names = set(client.get_default_database()["callq_messages"].index_information())
        assert {"callq_claim", "callq_owner"} <= names
    finally:
        conn.close()
        client.close()


@pytest.mark.slow
def test_kill_9_twice_loses_nothing(db_url: str, tmp_path: Path) -> None:
    report = run_crash_test(f"{db_url}?lease=3&poll=0.05", calls=2000, kills=2, workdir=tmp_path)
    print(f"mongo: {report}")
    assert report.lost == 0, report
    assert report.ran_unique == 2000


@pytest.mark.slow
def test_a_connection_rides_out_a_server_restart(tmp_path: Path) -> None:
    """Operations retry while the server is down (`retry` seconds) and carry on after."""
    import threading

    from callq_mongo.testing import free_port, secantus_server

    port, data = free_port(), tmp_path / "data"
    with secantus_server(data_dir=data, port=port) as server:
        conn = Connection(f"{server}restart?retry=60&poll=0.05")
        conn.publish("q", [f"r{i}".encode() for i in range(10)])
    result: list[object] = []
    fetcher = threading.Thread(target=lambda: result.append(drain(conn, "q", 10, timeout=60)))
    fetcher.start()  # retries while the server is down
    time.sleep(1.0)
    try:
        with secantus_server(data_dir=data, port=port):
            fetcher.join(60)
            got = result[0] if result else []
            assert sorted(d.body for d in got) == sorted(f"r{i}".encode() for i in range(10))  # type: ignore[union-attr]
    finally:
        conn.close()
