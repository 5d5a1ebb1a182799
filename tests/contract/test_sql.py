"""The broker contract on real PostgreSQL (127.0.0.1:5432, db test) and MariaDB (127.0.0.1:3306, db test)."""

from collections.abc import Iterator

import pytest

from callq.testing import BrokerContract
from callq_sql.testing import MARIADB, POSTGRES, fresh_prefix


@pytest.fixture(scope="module")
def pg_prefix() -> Iterator[str]:
    with fresh_prefix(POSTGRES) as prefix:
        yield prefix


@pytest.fixture(scope="module")
def maria_prefix() -> Iterator[str]:
    with fresh_prefix(MARIADB) as prefix:
        yield prefix


class TestPostgresqlContract(BrokerContract):
    wait_margin = 5.0

    @pytest.fixture
    def broker_url(self, pg_prefix: str) -> str:
        return f"{POSTGRES}?table_prefix={pg_prefix}&lease=2"


class TestMariadbContract(BrokerContract):
    wait_margin = 5.0

    @pytest.fixture
    def broker_url(self, maria_prefix: str) -> str:
        return f"{MARIADB}?table_prefix={maria_prefix}&lease=2"
