"""URL forms and parameters of the sqlite broker."""

import os
from pathlib import Path

import pytest

from callq.broker import Connection
from callq.brokers.sqlite import SqliteBroker, database_path
from callq.errors import ConfigError
from callq.url import BrokerURL


def test_relative_path_is_under_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    conn = Connection("sqlite:///data/sub/queues.db")
    try:
        conn.publish("q", [b"x"])
        assert conn.size("q") == 1
    finally:
        conn.close()
    assert (tmp_path / "data" / "sub" / "queues.db").is_file()  # parents created


def test_absolute_path_has_four_slashes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "abs" / "q.db"
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    url = f"sqlite:///{target}"
    assert url.startswith("sqlite:////")
    conn = Connection(url)
    conn.close()
    assert target.is_file()
    assert not (elsewhere / str(target).lstrip("/")).exists()


def test_relative_path_is_fixed_when_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    broker = SqliteBroker(BrokerURL.parse("sqlite:///q.db"))
    try:
        monkeypatch.chdir("/")
        broker.callq_publish("q", [b"x"], 0.0, None)
        assert broker.path == os.path.join(str(tmp_path), "q.db")
        assert broker.callq_size("q") == 1
    finally:
        broker.callq_close()


def test_database_path_forms() -> None:
    assert database_path(BrokerURL.parse("sqlite:////var/x.db")) == "/var/x.db"
    assert database_path(BrokerURL.parse("sqlite:///x.db")) == os.path.abspath("x.db")


def test_defaults(tmp_path: Path) -> None:
    broker = SqliteBroker(BrokerURL.parse(f"sqlite:///{tmp_path}/d.db"))
    try:
        assert broker.lease == 30.0
        assert broker.heartbeat_interval == pytest.approx(10.0)
        caps = broker.callq_capabilities()
        assert caps.acks and caps.persistent and caps.distributed and caps.native_delay and caps.priority
        assert 30.0 < caps.redelivery_timeout <= 31.0
    finally:
        broker.callq_close()


def test_params_are_read(tmp_path: Path) -> None:
    broker = SqliteBroker(BrokerURL.parse(
        f"sqlite:///{tmp_path}/p.db?lease=6&heartbeat=1.5&poll=0.2&busy_timeout=3&synchronous=full"))
    try:
        assert (broker.lease, broker.heartbeat_interval, broker.poll, broker.busy_timeout) == (6.0, 1.5, 0.2, 3.0)
        # core's Connection reads heartbeat_interval from the instance
        conn = Connection(f"sqlite:///{tmp_path}/p.db?lease=6")
        try:
            assert conn.heartbeat_interval == pytest.approx(2.0)
        finally:
            conn.close()
    finally:
        broker.callq_close()


@pytest.mark.parametrize(("query", "message"), [
    ("leese=3", "unknown parameter.*leese"),
    ("lease=soon", "lease='soon' is invalid"),
    ("lease=0", "lease must be >= 0.1"),
    ("lease=-1", "lease must be >= 0"),
    ("lease=3&heartbeat=3", "heartbeat must be > 0 and below lease"),
    ("heartbeat=0", "heartbeat must be > 0"),
    ("poll=0", "poll must be > 0"),
    ("busy_timeout=x", "busy_timeout='x' is invalid"),
    ("synchronous=off", "synchronous='off' must be one of full, normal"),
])
def test_bad_params_are_clear(tmp_path: Path, query: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Connection(f"sqlite:///{tmp_path}/bad.db?{query}")
    assert not (tmp_path / "bad.db").exists()


@pytest.mark.parametrize(("url", "message"), [
    ("sqlite://host/x.db", "has no host"),
    ("sqlite://", "name a database file"),
    ("sqlite:///", "name a database file"),
    ("sqlite:///:memory:", "in-memory databases cannot be shared"),
    ("sqlite:///dir/", "name a database file"),
])
def test_bad_paths_are_clear(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Connection(url)


def test_unwritable_directory_is_clear(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="cannot create directory"):
        Connection(f"sqlite:///{blocker}/sub/q.db")


def test_foreign_layout_is_refused(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE callq_messages (id INTEGER PRIMARY KEY)")
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match="layout 99"):
        Connection(f"sqlite:///{path}")
