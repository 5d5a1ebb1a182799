"""`callq dlq list/replay/purge` and `callq status` against a real Redis broker."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest

import callq
from callq import cli
from callq_redis.testing import REDIS, fresh_prefix


@pytest.fixture
def url() -> Iterator[str]:
    with fresh_prefix() as name:
        yield f"{REDIS}?prefix={name}"


def _wait(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_dlq_list_replay_purge(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    q = f"dlq-{uuid.uuid4().hex[:8]}"
    broken = {"on": True}

    @callq.task(q, broker=url, max_retries=0)
    def work(n: int) -> int:
        if broken["on"] and n < 0:
            raise ValueError(f"bug for {n}")
        return -n

    bad = work.push_many([(-1,), (-2,), (-3,)])
    work.push(5)
    work.consume()
    conn = callq.connect(url)
    try:
        _wait(lambda: conn.size(f"{q}.dlq") == 3)
        code, out, _ = _run(capsys, "dlq", "list", q, "--broker", url)
        assert code == 0 and "3 dead letter(s)" in out
        assert "ValueError: bug for -2" in out and str(bad[1]) in out and "retries exhausted" in out
        code, out, _ = _run(capsys, "dlq", "list", q, "--broker", url, "--json")
        letters = [json.loads(line) for line in out.splitlines()]
        assert {x["id"] for x in letters} == set(bad) and letters[0]["queue"] == q
        assert conn.size(f"{q}.dlq") == 3  # listing leaves them there

        broken["on"] = False  # the bug is fixed: replay one, then the rest
        code, out, _ = _run(capsys, "dlq", "replay", q, "--broker", url, "--id", str(bad[0]))
        assert code == 0 and "replayed 1 call(s)" in out
        assert bad[0].result(timeout=10) == 1
        info = bad[0].info()
        assert info["attempt"] == 0 and info["status"] == "done"
        assert conn.size(f"{q}.dlq") == 2
        code, _, err = _run(capsys, "dlq", "replay", q, "--broker", url, "--id", "nosuchid")
        assert code == 1 and "nosuchid: not found" in err
        code, out, _ = _run(capsys, "dlq", "replay", q, "--broker", url)
        assert "replayed 2 call(s)" in out
        assert [h.result(timeout=10) for h in bad[1:]] == [2, 3]
    finally:
        work.stop()
    broken["on"] = True
    work.push(-9)
    work.consume()
    try:
        _wait(lambda: conn.size(f"{q}.dlq") == 1)
    finally:
        work.stop()
    code, out, _ = _run(capsys, "dlq", "purge", q, "--broker", url, "--yes")
    assert code == 0 and out.strip() == "1" and conn.size(f"{q}.dlq") == 0


def test_status_table_and_json(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    q = f"st-{uuid.uuid4().hex[:8]}"

    @callq.task(q, broker=url)
    def slow(n: int) -> int:
        time.sleep(0.05)
        return n

    slow.push_many([(i,) for i in range(40)])
    slow.consume()
    try:
        code, out, _ = _run(capsys, "status", "--broker", url, "--interval", "0.3", "--json")
        assert code == 0
        rows = {r["queue"]: r for r in json.loads(out)}
        assert rows[q]["consumers"] == 1 and rows[q]["paused"] is False
        assert 0 <= rows[q]["size"] < 40 and rows[q]["publish_rate"] is not None
        slow.pause()
        code, out, _ = _run(capsys, "status", q, "--broker", url, "--interval", "0")
        header, line = out.splitlines()[:2]
        assert header.split()[:4] == ["QUEUE", "SIZE", "DLQ", "IN/S"]
        assert line.split()[0] == q and line.split()[-1] == "yes"
    finally:
        slow.resume()
        slow.stop()


def test_status_and_dlq_clear_errors(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "status", "--broker", "nosuch://x")
    assert code == 2 and "no broker installed for URL scheme 'nosuch'" in err
    code, _, err = _run(capsys, "status", "--broker", "not a url")
    assert code == 2 and "is not a URL" in err
    code, _, err = _run(capsys, "dlq", "list", "no_such_module_xyz:task")
    assert code == 2 and "cannot import module 'no_such_module_xyz'" in err
    code, _, err = _run(capsys, "status", "--broker", "memory://x", "--history", "nosuch://y")
    assert code == 2 and "call history" in err


def test_status_rates_from_history(url: str, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    from callq.history import disable, enable

    history_url = f"sqlite:///{tmp_path / 'h.db'}"
    history = enable(history_url, flush_interval=0.1)
    q = f"rate-{uuid.uuid4().hex[:8]}"

    @callq.task(q, broker=url, max_retries=0)
    def work(n: int) -> int:
        if n % 4 == 0:
            raise ValueError(n)
        return n

    try:
        handles = work.push_many([(i,) for i in range(40)])
        work.consume()
        for h in handles:
            try:
                h.result(10)
            except callq.RemoteError:
                pass
        assert history.flush(10)
        code, out, _ = _run(capsys, "status", q, "--broker", url, "--history", history_url, "--interval", "0",
                            "--json")
    finally:
        work.stop()
        disable()
    (row,) = json.loads(out)
    assert code == 0 and row["dlq_size"] == 10
    assert row["done_rate"] == pytest.approx(30 / 10) and row["failed_rate"] == pytest.approx(10 / 10)
