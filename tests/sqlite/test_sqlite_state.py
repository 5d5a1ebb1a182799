"""The sqlite shared store: atomic across real processes, ttl, prefixes, old files."""

import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from callq.broker import Connection
from callq.brokers.sqlite.schema import SCHEMA, SCHEMA_VERSION, TABLE
from callq.brokers.sqlite.state import STATE_TABLE, prefix_end

# Each process waits for the same start instant, then races for every key once.
_RACE = r"""
import sys, time
from callq.broker import Connection
url, start, keys, me = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
st = Connection(url).state
st.get("warm-up")  # connection open before the start
while time.time() < start:
    time.sleep(0.0005)
won = [str(k) for k in range(keys) if st.put(f"race:{k}", me, ttl=60, only_new=True)]
print(" ".join(won), flush=True)
"""

_INCR = r"""
import sys
from callq.broker import Connection
url, n = sys.argv[1], int(sys.argv[2])
st = Connection(url).state
for _ in range(n):
    st.incr("counter")
"""


def _run_all(script: str, argsets: list[list[str]]) -> list[str]:
    procs = [subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for args in argsets]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        outs.append(out)
    return outs


def test_only_new_has_one_winner_across_processes(db_url: str, open_conn) -> None:
    keys, procs = 40, 6
    start = time.time() + 1.5  # after every interpreter started
    outs = _run_all(_RACE, [[db_url, str(start), str(keys), f"p{i}"] for i in range(procs)])
    wins = Counter(k for out in outs for k in out.split())
    assert wins == Counter({str(k): 1 for k in range(keys)}), "every key won exactly once"
    st = open_conn().state
    owners = st.scan("race:")
    assert len(owners) == keys
    # the stored value is the winner's
    for i, out in enumerate(outs):
        for k in out.split():
            assert owners[f"race:{k}"] == f"p{i}"


def test_incr_is_atomic_across_processes(db_url: str, open_conn) -> None:
    _run_all(_INCR, [[db_url, "150"] for _ in range(4)])
    assert open_conn().state.get("counter") == "600"


def test_ttl_expiry(open_conn) -> None:
    st = open_conn().state
    assert st.put("k", "a", ttl=0.4)
    assert st.incr("n", 2, ttl=0.4) == 2
    assert st.incr("n", 3, ttl=100) == 5, "ttl only applies when the key is created"
    st.put("kept", "x")
    assert st.get("k") == "a"
    time.sleep(0.6)
    assert st.get("k") is None
    assert st.scan("") == {"kept": "x"}
    assert st.delete("k") is False, "an expired key counts as absent"
    assert st.incr("n") == 1, "an expired counter restarts from zero"
    assert st.put("k", "b", ttl=30, only_new=True)
    assert not st.put("k", "c", ttl=30, only_new=True)
    assert st.get("k") == "b"


def test_expired_rows_are_deleted_now_and_then(open_conn, tmp_path: Path) -> None:
    conn = open_conn()
    st = conn.state
    for i in range(20):
        st.put(f"short:{i}", "x", ttl=0.2)
    st.put("long", "y", ttl=60)
    time.sleep(0.3)
    st._next_cleanup = 0.0  # the next put cleans up (normally once a minute per process)
    st.put("other", "z")
    raw = sqlite3.connect(str(tmp_path / "queues.db"))
    try:
        keys = sorted(k for (k,) in raw.execute(f"SELECT key FROM {STATE_TABLE}"))
    finally:
        raw.close()
    assert keys == ["long", "other"]


def test_scan_prefix_is_exact(open_conn) -> None:
    st = open_conn().state
    keys = ["a%b", "a%c", "a_b", "ab", "a", "a\U0010ffff", "a\U0010ffffz", "b", "é:1", "é:2", "é;"]
    for k in keys:
        st.put(k, k)
    assert set(st.scan("a%")) == {"a%b", "a%c"}, "LIKE wildcards are plain characters"
    assert set(st.scan("a_")) == {"a_b"}
    assert set(st.scan("a")) == {k for k in keys if k.startswith("a")}
    assert set(st.scan("a\U0010ffff")) == {"a\U0010ffff", "a\U0010ffffz"}
    assert set(st.scan("é:")) == {"é:1", "é:2"}
    assert set(st.scan("")) == set(keys)


def test_prefix_end() -> None:
    assert prefix_end("ab") == "ac"
    assert prefix_end("a\U0010ffff") == "b"
    assert prefix_end("\U0010ffff") is None
    assert prefix_end("") is None
    assert prefix_end("\ud7ff") == "\ue000"


def test_scan_uses_the_primary_key(open_conn, tmp_path: Path) -> None:
    open_conn()
    raw = sqlite3.connect(str(tmp_path / "queues.db"))
    try:
        from callq.brokers.sqlite.state import _SCAN_RANGE
        plan = " ".join(row[3] for row in raw.execute("EXPLAIN QUERY PLAN " + _SCAN_RANGE, ("a", "b", 0)))
    finally:
        raw.close()
    assert "PRIMARY KEY" in plan and "SCAN" not in plan.replace("SEARCH", "")


def test_a_file_written_before_the_state_table_opens_and_keeps_its_messages(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    raw = sqlite3.connect(str(path), isolation_level=None)
    for statement in SCHEMA:  # the layout as callq wrote it before the store existed
        raw.execute(statement)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    raw.execute(f"INSERT INTO {TABLE} (queue, priority, available_at, body) VALUES ('q', 0, 0, x'7b7d')")
    raw.close()

    conn = Connection(f"sqlite:///{path}")
    try:
        assert conn.state.put("k", "v", only_new=True)
        assert conn.state.get("k") == "v"
        got = conn.fetch("q", 10, 1.0)
        assert [d.body for d in got] == [b"{}"]
        conn.ack(got)
    finally:
        conn.close()
    raw = sqlite3.connect(str(path))
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 1
    finally:
        raw.close()


def test_a_file_of_another_layout_is_still_refused(tmp_path: Path) -> None:
    from callq.errors import ConfigError

    path = tmp_path / "future.db"
    raw = sqlite3.connect(str(path), isolation_level=None)
    for statement in SCHEMA:
        raw.execute(statement)
    raw.execute("PRAGMA user_version = 99")
    raw.close()
    with pytest.raises(ConfigError, match="layout 99"):
        Connection(f"sqlite:///{path}")
