import sqlite3
from pathlib import Path

import pytest

from callq.testing import BrokerContract


@pytest.fixture(scope="module")
def sqlite_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sqlite-contract") / "queues.db"


class TestSqliteContract(BrokerContract):
    # A short lease so the dead-consumer tests are quick (nothing heartbeats here).
    wait_margin = 5.0

    @pytest.fixture
    def broker_url(self, sqlite_database: Path) -> str:
        # an absolute path: sqlite:////tmp/.../queues.db
        return f"sqlite:///{sqlite_database}?lease=2"

    def inject_foreign_entries(self, broker_url: str, queue: str, phase: str) -> int:
        """Rows written by other SQL: a TEXT body, a number, a float (NOT NULL forbids NULL)."""
        from callq.brokers.sqlite import schema

        db = sqlite3.connect(broker_url.split("sqlite:///", 1)[1].split("?", 1)[0])
        try:
            rows = [(queue, 0, 0.0, body) for body in ('{"zz": "text"}', 12345, 1.5, "text")]
            with db:
                db.executemany(schema.INSERT, rows)
        finally:
            db.close()
        return len(rows)
