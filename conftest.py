"""Suite-wide collection rules for a parallel run (pytest-xdist, ``--dist loadgroup``).

* Tests of one broker share a group, so its test servers (Kafka, Pulsar, a Redis cluster...)
  start once, in one worker process.
* Tests that stop or restart a server other tests share, or that measure timing closely,
  are marked ``exclusive``: ``make test`` runs them afterwards, alone.
"""

from __future__ import annotations

import pytest

# files whose tests restart the machine's shared servers or measure lateness in milliseconds
EXCLUSIVE_FILES = {
    "tests/test_redis_restart.py",
    "plugins/rabbitmq/tests/test_rabbitmq_restart.py",
    "plugins/sql/tests/test_sql_restart.py",
    "plugins/nats/tests/test_nats_restart.py",
    "plugins/redis/tests/test_redis_hosts.py",
    "plugins/rabbitmq/tests/test_rabbitmq_quorum.py",  # three extra RabbitMQ nodes, heavy
}
EXCLUSIVE_TESTS = (
    "test_redis_delays_arrive_within_50_ms",
    "test_other_native_delays_are_on_time_too",
    "test_distributed_qps_holds_the_total_across_processes",
    "test_qps_paces_calls_evenly",
)


def _group(path: str) -> str:
    parts = path.split("/")
    if parts[0] == "plugins" and len(parts) > 1:
        return parts[1]
    if parts[:2] == ["tests", "contract"]:
        return parts[2].removeprefix("test_").removesuffix(".py")
    if parts[:2] == ["tests", "sqlite"]:
        return "sqlite"
    return path


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = config.rootpath
    for item in items:
        path = item.path.relative_to(root).as_posix()
        item.add_marker(pytest.mark.xdist_group(_group(path)))
        if path in EXCLUSIVE_FILES or item.name.startswith(EXCLUSIVE_TESTS):
            item.add_marker(pytest.mark.exclusive)
