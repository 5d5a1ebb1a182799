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
    # SecantusDB (Python) walks the claim index from its start for every claim, so a claim
    # costs time in proportion to the queue's length: 3,000 waiting messages take it to ~30
    # calls/s. The same mix, a third of the size, checks the same things.
    poison_valid = 500
    poison_invalid = 500

    @pytest.fixture
    def broker_url(self, mongo_db_url: str) -> str:
        return f"{mongo_db_url}?lease=2&poll=0.05"
