"""Results (RPC): handles, statuses, remote errors, every store, waiting without polling Redis."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import callq
from callq.results import AsyncResult, RemoteError, ResultsOff, open_store
from callq.results.memory import MemoryResultStore
from callq_redis.testing import REDIS, fresh_prefix
from tests.sqldb import KINDS, private_db


@pytest.fixture
def prefix() -> Iterator[str]:
    with fresh_prefix() as name:
        yield name


def _tasks(broker: str, results: str | bool | None = None, ttl: float = 60.0):
    q = f"res-{uuid.uuid4().hex[:8]}"

    @callq.task(q, broker=broker, results=results, result_ttl=ttl, max_retries=1, retry_backoff=0)
    def divide(a: float, b: float) -> float:
        return a / b

    @callq.task(q + "-obj", broker=broker, results=results, result_ttl=ttl, max_retries=0)
    def not_json() -> object:
        return object()

    return divide, not_json


def _check_rpc(broker: str, results: str | bool | None = None) -> None:
    divide, not_json = _tasks(broker, results)
    h = divide.push(6, 3)
    assert isinstance(h, str) and h == h.id and len(h) == 32
    assert h.status == "pending"
    divide.consume()
    not_json.consume()
    try:
        assert h.result(timeout=10) == 2.0
        assert h.status == "done"
        info = h.info()
        assert info["attempt"] == 0 and info["finished_at"] >= info["started_at"] > 0
        bad = divide.push(1, 0)
        with pytest.raises(RemoteError) as err:
            bad.result(timeout=10)
        assert err.value.type_name == "ZeroDivisionError"
        assert err.value.message == "division by zero"
        assert "ZeroDivisionError" in err.value.traceback and "return a / b" in err.value.traceback
        assert err.value.status == "dead" and bad.status == "dead"
        assert bad.info()["attempt"] == 1  # retried once, then dead
        odd = not_json.push()
        with pytest.raises(RemoteError, match="not JSON-serialisable"):
            odd.result(timeout=10)
        assert odd.status == "failed"
        # many at once, and a handle rebuilt from the bare id
        handles = divide.push_many([(i, 1) for i in range(50)])
        assert [AsyncResult(str(x), task=divide).result(10) for x in handles] == [float(i) for i in range(50)]
    finally:
        divide.stop()
        not_json.stop()


def test_rpc_memory_broker_default_store(mem_url: str) -> None:
    _check_rpc(mem_url)


def test_rpc_redis(prefix: str) -> None:
    _check_rpc(f"{REDIS}?prefix={prefix}")


@pytest.mark.parametrize("scheme", ["redis", "redis+stream", "sqlite"])
def test_chunked_calls_results_go_with_the_acks(prefix: str, scheme: str, tmp_path: Path) -> None:
    # short calls run in chunks; on the default store (the broker's own URL) their final records
    # travel with the chunk's acks (Redis: in the claim script; sqlite: in the ack's transaction):
    # every one arrives, and waiters wake
    url = f"sqlite:///{tmp_path}/q.db" if scheme == "sqlite" else f"{scheme}://127.0.0.1:6379/0?prefix={prefix}"
    elsewhere = f"sqlite:///{tmp_path}/r.db" if scheme == "sqlite" else f"{REDIS}?prefix={prefix}x"

    @callq.task(f"carry-{uuid.uuid4().hex[:8]}", broker=url, concurrency=8, max_retries=0)
    def square(x: int) -> int:
        if x == 7:
            raise ValueError("seven")
        return x * x

    handles = square.push_many([(i,) for i in range(600)])
    square.consume()
    try:
        control = next(c for c in square._consumer.controls.all if c.name == "results")  # type: ignore[union-attr]
        assert control.carried
        assert [h.result(15) for h in handles if h is not handles[7]] == [i * i for i in range(600) if i != 7]
        with pytest.raises(RemoteError, match="seven"):
            handles[7].result(5)
        assert handles[7].status == "dead"
    finally:
        square.stop()
    # another store, or a mode that does not carry them: the records take their own round trip
    other = callq.task(f"own-{uuid.uuid4().hex[:8]}", broker=url, results=elsewhere)(_square)
    other.consume()
    try:
        control = next(c for c in other._consumer.controls.all if c.name == "results")  # type: ignore[union-attr]
        assert not control.carried
        assert other.push(3).result(10) == 9
    finally:
        other.stop()


def _square(x: int) -> int:
    return x * x


def test_rpc_sqlite_broker_keeps_results_in_its_file(tmp_path: Path) -> None:
    import sqlite3

    _check_rpc(f"sqlite:///{tmp_path / 'broker.db'}?lease=5")
    with sqlite3.connect(tmp_path / "broker.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM callq_results WHERE status = 'done'").fetchone()[0] == 51


def test_rpc_postgresql_broker_uses_its_shared_store() -> None:
    from callq_sql.testing import POSTGRES
    from callq_sql.testing import fresh_prefix as sql_prefix

    with sql_prefix(POSTGRES) as name:
        url = f"{POSTGRES}?table_prefix={name}&lease=2"
        divide, _ = _tasks(url)
        assert callq.results.store_url_for(divide.options) == "state+" + url
        _check_rpc(url)


@pytest.mark.parametrize("kind", KINDS)
def test_rpc_sql_store(kind: str, tmp_path: Path, mem_url: str) -> None:
    with private_db(kind, tmp_path) as url:
        _check_rpc(mem_url, results=url)
        import sqlalchemy as sa

        from callq.sqlengine import engine_for

        with engine_for(url).connect() as conn:
            assert conn.execute(sa.text("SELECT COUNT(*) FROM callq_results")).scalar() >= 53


def test_results_off_says_so_at_once(mem_url: str) -> None:
    divide, _ = _tasks(mem_url, results=False)
    h = divide.push(1, 2)
    started = time.monotonic()
    with pytest.raises(ResultsOff, match="keeps no results"):
        h.result(timeout=30)
    assert time.monotonic() - started < 1


def test_broker_without_shared_store_results_off_and_true_is_an_error() -> None:
    @callq.task("nostate", broker="amqp://guest:guest@127.0.0.1:5672/", results=None)
    def f() -> None: ...

    with pytest.raises(ResultsOff, match="no shared store"):
        AsyncResult("x", task=f).result(1)

    @callq.task("nostate", broker="amqp://guest:guest@127.0.0.1:5672/", results=True)
    def g() -> None: ...

    with pytest.raises(callq.ConfigError, match="results=True"):
        _ = AsyncResult("x", task=g).status


def test_unknown_store_scheme_is_a_clear_error(mem_url: str) -> None:
    divide, _ = _tasks(mem_url, results="nosuch://x")
    with pytest.raises(callq.ConfigError, match="no result store for URL scheme 'nosuch'"):
        _ = divide.push(1, 2).status


def test_timeout_and_running_status(mem_url: str) -> None:
    gate = threading.Event()

    @callq.task(f"slow-{uuid.uuid4().hex[:6]}", broker=mem_url)
    def slow() -> str:
        gate.wait(10)
        return "ok"

    slow.consume()
    try:
        h = slow.push()
        with pytest.raises(TimeoutError):
            h.result(timeout=0.3)
        assert h.status == "running"
        gate.set()
        assert asyncio.run(h.result_async(timeout=10)) == "ok"
    finally:
        slow.stop()


def test_redis_wait_blocks_instead_of_polling(prefix: str) -> None:
    store = open_store(f"{REDIS}?prefix={prefix}")
    sent: list[object] = []  # the store's own commands (a global count would see other tests' GETs)
    for client in (store.client, store.blocking):
        real = client.execute_command
        client.execute_command = lambda *a, real=real, **kw: (sent.append(a[0]), real(*a, **kw))[1]
    waiter = threading.Thread(target=lambda: store.wait("abc", 1.0))
    waiter.start()
    waiter.join()
    # a look, one blocking pop for the whole second, a last look: no polling loop
    assert sent.count("BLPOP") == 1 and sent.count("GET") <= 2, sent
    # two waiters of one call both wake when it finishes
    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(store.wait("abc", 5))) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    written = time.monotonic()
    store.put_many([("abc", {"id": "abc", "status": "done", "result": 7}, 10)])
    for t in threads:
        t.join(6)
    assert [r["result"] for r in got] == [7, 7]  # type: ignore[index]
    assert time.monotonic() - written < 2.0, "woken by the write, not by the waiters' 5 s re-look"


def test_redis_result_args_group_runs_of_one_ttl_and_finality(prefix: str) -> None:
    import orjson
    import redis

    from callq_redis.results import result_args

    def rec(name: str, status: str) -> dict[str, str]:
        return {"id": name, "status": status}

    items = [("a", rec("a", "done"), 60.0), ("b", rec("b", "running"), 60.0), ("c", rec("c", "started"), 60.0),
             ("d", rec("d", "done"), 60.0001), ("e", rec("e", "dead"), 1.0), ("f", rec("f", "done"), 1.0)]
    dumped = {name: orjson.dumps(record) for name, record, _ in items}
    assert result_args("p", items) == [
        "p", 1, 60000, 1, "a", dumped["a"],
        2, 60000, 0, "b", dumped["b"], "c", dumped["c"],  # two statuses, neither final: one run
        1, 60000, 1, "d", dumped["d"],
        2, 1000, 1, "e", dumped["e"], "f", dumped["f"],
    ]
    assert result_args("p", []) == ["p"]
    store, r = open_store(f"{REDIS}?prefix={prefix}"), redis.Redis.from_url(REDIS)
    store.put_many(items)
    assert [store.get(name)["status"] for name, _, _ in items] == ["done", "running", "started", "done", "dead", "done"]  # type: ignore[index]
    assert 59_000 < r.pttl(f"{prefix}:result:d") <= 60_000 and 0 < r.pttl(f"{prefix}:result:f") <= 1000


def test_redis_results_written_with_a_claim_wake_only_real_waiters(prefix: str) -> None:
    import redis

    from callq.broker import Connection

    url = f"{REDIS}?prefix={prefix}"
    store, conn, r = open_store(url), Connection(url), redis.Redis.from_url(REDIS)
    assert conn.carries_results(url)
    conn.publish("wake", [b"a", b"b", b"c"])
    held = conn.fetch("wake", 1, 1.0)
    # nobody waits anywhere: a final record leaves no wake list behind
    held = conn.ack_fetch(held, "wake", 1, 1.0, [("quiet", {"id": "quiet", "status": "done"}, 60)])
    assert store.get("quiet") == {"id": "quiet", "status": "done"}
    assert not r.exists(f"{prefix}:result:quiet:wake")
    # a waiter on another connection (as another process) wakes when the claim writes its call
    other = open_store(url)
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(other.wait("loud", 10)))
    waiter.start()
    time.sleep(0.3)
    written = time.monotonic()
    conn.ack_fetch(held, "wake", 1, 1.0, [("loud", {"id": "loud", "status": "done", "result": 3}, 60)])
    waiter.join(10)
    assert got == [{"id": "loud", "status": "done", "result": 3}]
    assert time.monotonic() - written < 2.0, "woken by the claim's write, not by the 5 s re-look"
    conn.close()


def test_memory_store_expires_and_stays_bounded() -> None:
    store = MemoryResultStore("memory://bounded?max=100")
    store.put_many([(str(i), {"status": "done", "result": i}, 0.05) for i in range(50)])
    time.sleep(0.1)
    store.put_many([(f"n{i}", {"status": "done", "result": i}, 60) for i in range(300)])
    assert len(store) == 100
    assert store.get("1") is None and store.get("n299") == {"status": "done", "result": 299}


def test_memory_store_mixed_ttls_and_overwrites() -> None:
    store = MemoryResultStore("memory://mixed?max=1000")
    store.put_many([("long", {"status": "done"}, 60)])
    store.put_many([("short", {"status": "running"}, 0.05)])
    store.put_many([("kept", {"status": "running"}, 0.05), ("kept", {"status": "done", "result": 1}, 60)])
    time.sleep(0.1)
    store.put_many([("later", {"status": "done"}, 60)])
    assert store.get("short") is None, "past its TTL, even behind a longer one"
    assert store.get("kept") == {"status": "done", "result": 1}, "an overwrite keeps the newer TTL"
    assert store.get("long") == {"status": "done"}


def test_handle_from_another_process(prefix: str, tmp_path: Path) -> None:
    url = f"{REDIS}?prefix={prefix}"
    divide, _ = _tasks(url)
    h = divide.push(10, 4)
    code = ("import sys; from callq import AsyncResult; "
            f"print(AsyncResult(sys.argv[1], store={url!r}).result(timeout=20))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(h)], stdout=subprocess.PIPE, text=True)
    divide.consume()
    try:
        out, _ = proc.communicate(timeout=30)
    finally:
        divide.stop()
    assert out.strip() == "2.5"


def test_rpc_from_worker_processes(prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    url = f"{REDIS}?prefix={prefix}"
    monkeypatch.setenv("RPCAPP_BROKER", url)
    monkeypatch.setenv("RPCAPP_QUEUE", f"rpcp-{uuid.uuid4().hex[:6]}")
    import tests.rpcapp_tasks as app

    app = importlib.reload(app)
    handles = app.square.push_many([(i,) for i in range(40)])
    group = app.square.consume(processes=2)
    try:
        results = [h.result(timeout=30) for h in handles]
    finally:
        group.stop()
    assert [r["n"] for r in results] == [i * i for i in range(40)]
    assert os.getpid() not in {r["pid"] for r in results}


def test_rpc_async_task(mem_url: str) -> None:
    @callq.task(f"async-{uuid.uuid4().hex[:6]}", broker=mem_url, max_retries=0)
    async def fetch(n: int) -> int:
        await asyncio.sleep(0.01)
        if n < 0:
            raise KeyError(n)
        return n + 1

    fetch.consume()
    try:
        assert fetch.push(1).result(10) == 2
        with pytest.raises(RemoteError) as err:
            fetch.push(-1).result(10)
        assert err.value.type_name == "KeyError"
    finally:
        fetch.stop()


def test_postgresql_store_waits_with_listen_notify(tmp_path: Path) -> None:
    from callq.results.sql import SQLResultStore

    with private_db("postgresql", tmp_path) as url:
        waiter, writer = SQLResultStore(url), SQLResultStore(url)  # as two processes: no shared wake-up
        looks = []
        real_get = waiter.get
        waiter.get = lambda call_id: looks.append(1) or real_get(call_id)  # type: ignore[method-assign]
        got: list[object] = []
        t = threading.Thread(target=lambda: got.append(waiter.wait("pg1", 10)))
        t.start()
        time.sleep(1.5)
        written = time.monotonic()
        writer.put_many([("pg1", {"id": "pg1", "status": "done", "result": [1, 2]}, 60)])
        t.join(10)
        woke = time.monotonic() - written
        waiter.close()
        assert got and got[0]["result"] == [1, 2]  # type: ignore[index]
        assert woke < 0.5, woke
        assert len(looks) <= 6, len(looks)  # polling every <=250 ms would look ~12 times


def test_expired_and_skipped_statuses(mem_url: str) -> None:
    q = f"exp-{uuid.uuid4().hex[:6]}"

    @callq.task(q, broker=mem_url, expires=0.1)
    def late(n: int) -> int:
        return n

    @callq.task(q + "-dedup", broker=mem_url, dedup=True)
    def once(n: int) -> int:
        return n

    h = late.push(1)
    time.sleep(0.3)
    late.consume()
    first = once.push(5)
    once.consume()
    try:
        with pytest.raises(RemoteError) as err:
            h.result(10)
        assert err.value.status == "expired" and h.status == "expired"
        assert first.result(10) == 5
        again = once.push(5)
        with pytest.raises(RemoteError) as err:
            again.result(10)
        assert again.status == "skipped" and err.value.status == "skipped"
    finally:
        late.stop()
        once.stop()


def test_results_plugin_disabled_says_so(tmp_path: Path) -> None:
    code = ("import callq\n"
            "@callq.task('q', broker='memory://x')\n"
            "def f(): return 1\n"
            "try:\n    f.push().result(30)\n"
            "except callq.ResultsOff as exc:\n    print('off:', exc)\n")
    env = {**os.environ, "CALLQ_DISABLE_PLUGINS": "callq.default.results"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=30)
    assert "off: results are off in this process" in out.stdout, out.stderr
