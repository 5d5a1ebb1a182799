"""What is specific to callq-sql: URLs, schema version, kept rows, leases, the claim's order."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import create_engine, text

from callq.broker import Connection
from callq.errors import BrokerError, ConfigError
from callq.testing import drain, fresh_queue_name
from callq_sql import SCHEMA_VERSION
from callq_sql.schema import forget_schema
from callq_sql.testing import MARIADB, POSTGRES, sqlalchemy_url


def _query(server: str, sql: str) -> list[tuple]:
    engine = create_engine(sqlalchemy_url(server))
    try:
        with engine.begin() as conn:
            result = conn.execute(text(sql))
            return [tuple(r) for r in result.all()] if result.returns_rows else []
    finally:
        engine.dispose()


@pytest.mark.parametrize(("url", "needle"), [
    (f"{POSTGRES}?table_prefix=bad-prefix", "table_prefix"),
    (f"{POSTGRES}?table_prefix=1abc", "table_prefix"),
    (f"{POSTGRES}?lease=0.5", "lease"),
    (f"{POSTGRES}?lease=soon", "lease"),
    (f"{POSTGRES}?keep_done=maybe", "keep_done"),
    (f"{POSTGRES}?pool_size=0", "pool_size"),
    ("postgresql://127.0.0.1:5432/", "database"),
    ("postgresql+asyncpg://127.0.0.1:5432/test", "callq-sql handles"),
    (f"{POSTGRES}?leese=3", "neither callq-sql's"),
    (f"{MARIADB}?leese=3", "neither callq-sql's"),
])
def test_bad_urls_are_config_errors(url: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        Connection(url)


def test_wrong_password_is_a_broker_error_with_the_password_masked() -> None:
    with pytest.raises(BrokerError) as info:
        Connection("mysql://nobody:s3cret@127.0.0.1:3306/test?retry=0")
    assert "s3cret" not in str(info.value)
    assert "***" in str(info.value) and "Access denied" in str(info.value)


def test_missing_database_fails_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(BrokerError, match="cannot connect.*nosuchdb"):
        Connection("postgresql://postgres@127.0.0.1:5432/nosuchdb")
    assert time.monotonic() - started < 5


def test_driver_parameters_pass_through(prefix: str, server: str) -> None:
    extra = "application_name=callq-test" if server == POSTGRES else "charset=utf8mb4"
    conn = Connection(f"{server}?table_prefix={prefix}&{extra}")
    try:
        q = fresh_queue_name()
        conn.publish(q, [b"x"])
        assert [d.body for d in drain(conn, q, 1)] == [b"x"]
    finally:
        conn.close()


def test_schema_created_on_first_use_with_its_version(prefix: str, server: str) -> None:
    Connection(f"{server}?table_prefix={prefix}").close()
    assert _query(server, f"SELECT value FROM {prefix}meta WHERE name = 'schema_version'") == [(str(SCHEMA_VERSION),)]


def test_newer_schema_version_is_refused(prefix: str, server: str) -> None:
    url = f"{server}?table_prefix={prefix}"
    Connection(url).close()
    _query(server, f"UPDATE {prefix}meta SET value = '{SCHEMA_VERSION + 1}' WHERE name = 'schema_version'")
    forget_schema(create_engine(sqlalchemy_url(server)), prefix)
    with pytest.raises(ConfigError, match="newer than this callq-sql"):
        Connection(url)


def test_keep_done_marks_rows_instead_of_deleting(prefix: str, server: str) -> None:
    conn = Connection(f"{server}?table_prefix={prefix}&keep_done=true")
    try:
        q = fresh_queue_name()
        conn.publish(q, [b"a", b"b"])
        assert len(drain(conn, q, 2)) == 2
        assert conn.size(q) == 0
        rows = _query(server, f"SELECT status, owner, done_at IS NOT NULL FROM {prefix}messages WHERE queue = '{q}'")
        assert sorted(rows) == [(2, None, True), (2, None, True)]
    finally:
        conn.close()


def test_claim_marks_owner_and_lease_and_expired_leases_come_back(prefix: str, server: str) -> None:
    url = f"{server}?table_prefix={prefix}&lease=1"
    holder, other = Connection(url), Connection(url)
    try:
        q = fresh_queue_name()
        holder.publish(q, [b"m"])
        held = holder.fetch(q, 5, 2)
        assert len(held) == 1 and not held[0].redelivered
        ((owner, lease_left),) = _query(
            server, f"SELECT owner, lease_until - {_now(server)} FROM {prefix}messages WHERE queue = '{q}'")
        assert owner == holder.broker.consumer_id  # type: ignore[attr-defined]
        assert 0 < lease_left <= 1.0
        time.sleep(1.2)  # no heartbeat: the lease runs out
        back = drain(other, q, 1, timeout=5)
        assert [d.body for d in back] == [b"m"] and back[0].redelivered
        assert holder.ack(held) == 1  # a late ack of a row no longer ours: harmless, the row stays acked by other
        assert other.size(q) == 0
    finally:
        holder.close()
        other.close()


def test_priority_then_fifo_and_delay_within_a_batch(prefix: str, server: str) -> None:
    conn = Connection(f"{server}?table_prefix={prefix}")
    try:
        q = fresh_queue_name()
        conn.publish(q, [b"l1", b"l2"], priority=1)
        conn.publish(q, [b"h1", b"h2"], priority=5)
        conn.publish(q, [b"d"], priority=9, delay=1.0)
        conn.publish(q, [b"z1"])
        got = conn.fetch(q, 10, 1)
        assert [d.body for d in got] == [b"h1", b"h2", b"l1", b"l2", b"z1"]
        conn.ack(got)
        assert [d.body for d in drain(conn, q, 1, timeout=5)] == [b"d"]
    finally:
        conn.close()


def _now(server: str) -> str:
    return "CAST(EXTRACT(EPOCH FROM now()) AS DOUBLE PRECISION)" if server == POSTGRES else "UNIX_TIMESTAMP(NOW(6))"


def test_mariadb_and_mysql_schemes_use_pymysql(prefix: str) -> None:
    for scheme in ("mysql", "mariadb", "mysql+pymysql"):
        conn = Connection(f"{scheme}://root@127.0.0.1:3306/test?table_prefix={prefix}")
        try:
            assert conn.broker.engine.dialect.driver == "pymysql"  # type: ignore[attr-defined]
        finally:
            conn.close()
    assert MARIADB.startswith("mysql://")


def test_reconcile_after_a_failed_claim_gives_back_only_orphans(prefix: str, server: str) -> None:
    """A claim retried after an error must keep what it claimed; rows owned but never handed out go back."""
    conn = Connection(f"{server}?table_prefix={prefix}")
    try:
        broker = conn.broker
        q = fresh_queue_name()
        conn.publish(q, [b"a", b"b", b"c"])
        held = conn.fetch(q, 1, 1)
        assert len(held) == 1
        # an orphan: a row this consumer owns (as if a claim committed but its reply was lost)
        _query(server, f"UPDATE {prefix}messages SET status = 1, owner = '{broker.consumer_id}', "  # type: ignore[attr-defined]
                       f"lease_until = {_now(server)} + 60 WHERE queue = '{q}' AND body = 'c'")
        broker._suspect = True  # type: ignore[attr-defined]
        got = conn.fetch(q, 1, 1)  # claims 'b', then reconciles: 'c' goes back, 'a' and 'b' stay ours
        assert [d.body for d in got] == [b"b"]
        assert [d.body for d in conn.fetch(q, 5, 1)] == [b"c"]
        owned = _query(server, f"SELECT body FROM {prefix}messages WHERE queue = '{q}' AND status = 1 "
                               f"AND owner = '{broker.consumer_id}' ORDER BY id")  # type: ignore[attr-defined]
        assert [bytes(r[0]) for r in owned] == [b"a", b"b", b"c"]
    finally:
        conn.close()
