"""Call history: rows for every outcome, batched writes, search, counts, retention."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import callq
from callq.history import HistoryStore, disable, enable
from callq.history.plugin import HistoryPlugin
from tests.sqldb import KINDS, private_db


@pytest.fixture
def history_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with private_db(getattr(request, "param", "sqlite"), tmp_path) as url:
        yield url


def _run_calls(mem_url: str, history: HistoryPlugin) -> tuple[str, list[str]]:
    q = f"hist-{uuid.uuid4().hex[:8]}"

    @callq.task(q, broker=mem_url, max_retries=1, retry_backoff=0)
    def work(n: int, tag: str = "") -> int:
        if n < 0:
            raise ValueError(f"negative n {n}")
        return n * 2

    work.consume()
    try:
        ok = work.push_many([(i,) for i in range(20)])
        bad = work.push(-5, tag="needle-xyz")
        assert [h.result(10) for h in ok] == [i * 2 for i in range(20)]
        with pytest.raises(callq.RemoteError):
            bad.result(10)
    finally:
        work.stop()
    assert history.flush(10)
    return q, [str(bad)]


@pytest.mark.parametrize("history_url", KINDS, indirect=True)
def test_every_outcome_is_recorded_and_searchable(history_url: str, mem_url: str) -> None:
    history = enable(history_url, flush_interval=0.1)
    try:
        q, (bad,) = _run_calls(mem_url, history)
    finally:
        disable()
    store = HistoryStore(history_url)
    page = store.search(queue=q)
    assert page.total == 22  # 20 done, the failing call: retry then dead
    done = store.search(queue=q, outcome="done")
    assert done.total == 20 and done.rows[0]["result"] == done.rows[0]["args"]["n"] * 2
    failed = store.search(queue=q, outcome="failed")
    assert failed.total == 2
    found = store.search(text="needle-xyz")
    assert found.total == 2 and {r["call_id"] for r in found.rows} == {bad}
    assert store.search(text="negative n").total == 2
    assert store.search(text="100%_").total == 0  # LIKE wildcards are escaped
    attempts = store.attempts(bad)
    assert [(a["outcome"], a["attempt"]) for a in attempts] == [("retry", 0), ("dead", 1)]
    row = attempts[-1]
    assert row["error_type"] == "ValueError" and "raise ValueError" in row["traceback"]
    assert row["host"] and row["pid"] and row["published_at"] <= row["started_at"] <= row["finished_at"]
    assert row["function"].endswith("work") and row["args"] == {"n": -5, "tag": "needle-xyz"}
    # time range and pagination
    assert store.search(queue=q, since=time.time() + 10).total == 0
    second = store.search(queue=q, limit=5, offset=5)
    assert len(second.rows) == 5 and second.total == 22
    per_second = store.counts(1.0, 60, queue=q)
    assert len(per_second) == 60 and sum(n for _, n, _ in per_second) == 22
    assert sum(f for _, _, f in per_second) == 2
    stats = store.queue_stats(60)
    assert stats[q]["finished"] == pytest.approx(22 / 60)


def test_batched_not_one_insert_per_call(history_url: str, mem_url: str) -> None:
    history = enable(history_url, flush_interval=0.3)
    inserts = []
    real = HistoryStore.insert_many

    def counting(self: HistoryStore, rows: list) -> None:  # type: ignore[type-arg]
        inserts.append(len(rows))
        real(self, rows)

    HistoryStore.insert_many = counting  # type: ignore[method-assign]
    try:
        _run_calls(mem_url, history)
    finally:
        HistoryStore.insert_many = real  # type: ignore[method-assign]
        disable()
    assert sum(inserts) == 22 and len(inserts) <= 5, inserts


def test_retention_by_age_and_rows(history_url: str) -> None:
    store = HistoryStore(history_url)
    now = time.time()
    old = [{"queue": "r", "function": "f", "outcome": "done", "attempt": 0, "finished_at": now - 1000}] * 30
    new = [{"queue": "r", "function": "f", "outcome": "done", "attempt": 0, "finished_at": now}] * 50
    store.insert_many(old + new)
    assert store.prune(max_age=500, max_rows=None) == 30
    assert store.prune(max_age=None, max_rows=20) == 30
    assert store.count() == 20


def test_env_enables_history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from callq.history import plugin

    monkeypatch.setenv("CALLQ_HISTORY_URL", "1")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    p = plugin.from_env()
    assert isinstance(p, HistoryPlugin) and p.url.endswith("callq/history.db") and str(tmp_path) in p.url
    monkeypatch.setenv("CALLQ_HISTORY_URL", "")
    assert not isinstance(plugin.from_env(), HistoryPlugin)


def test_parent_id_of_calls_published_inside_a_call(history_url: str, mem_url: str) -> None:
    history = enable(history_url, flush_interval=0.1)
    q = f"par-{uuid.uuid4().hex[:8]}"
    try:
        @callq.task(q + "-child", broker=mem_url)
        def child(n: int) -> int:
            return n

        @callq.task(q, broker=mem_url)
        def parent(n: int) -> str:
            return str(child.push(n))

        child.consume()
        parent.consume()
        top = parent.push(4)
        kid = top.result(10)
        assert callq.AsyncResult(kid, task=child).result(10) == 4
        parent.stop()
        child.stop()
        assert history.flush(10)
    finally:
        disable()
    store = HistoryStore(history_url)
    (row,) = store.attempts(kid)
    assert row["parent"] == str(top) and store.attempts(str(top))[0]["parent"] is None
