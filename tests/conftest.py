import uuid

import pytest


@pytest.fixture
def mem_url() -> str:
    """A private in-process broker per test."""
    return f"memory://t-{uuid.uuid4().hex[:8]}"
