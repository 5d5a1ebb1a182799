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
