"""The broker contract on MongoDB (tested on SecantusDB, started for the run; see docs/brokers/mongo.md)."""

from collections.abc import Iterator

import pytest

from callq.testing import BrokerContract
from callq_mongo.testing import fresh_database, mongo_url


@pytest.fixture(scope="module")
def mongo_db_url() -> Iterator[str]:
    with mongo_url() as server, fresh_database(server) as url:
        yield url


class TestMongoContract(BrokerContract):
    wait_margin = 5.0

    @pytest.fixture
    def broker_url(self, mongo_db_url: str) -> str:
        return f"{mongo_db_url}?lease=2&poll=0.05"
