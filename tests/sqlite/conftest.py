from collections.abc import Iterator
from pathlib import Path

import pytest

from callq.broker import Connection


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A fresh database file with a one-second lease."""
    return f"sqlite:///{tmp_path}/queues.db?lease=1"


@pytest.fixture
def open_conn(db_url: str) -> Iterator:
    """Open connections to ``db_url`` (or another URL); all closed after the test."""
    opened: list[Connection] = []

    def open_(url: str | None = None) -> Connection:
        conn = Connection(url or db_url)
        opened.append(conn)
        return conn

    yield open_
    for conn in opened:
        conn.close()
