"""One throwaway MongoDB-protocol server (SecantusDB, or CALLQ_MONGO_URL) for the plugin's tests."""

from collections.abc import Iterator

import pytest

from callq_mongo.testing import fresh_database, mongo_url


@pytest.fixture(scope="session")
def mongo_server() -> Iterator[str]:
    with mongo_url() as url:
        yield url


@pytest.fixture
def db_url(mongo_server: str) -> Iterator[str]:
    """A broker URL on a private database, dropped after the test."""
    with fresh_database(mongo_server) as url:
        yield url
