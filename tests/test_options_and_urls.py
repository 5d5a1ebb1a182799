import pytest

import callq
from callq.errors import BrokerNotFound, ConfigError
from callq.url import BrokerURL


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"queue": ""}, "queue must be a non-empty string"),
        ({"queue": "q", "concurrency": 0}, "concurrency must be >= 1"),
        ({"queue": "q", "concurrency": 2.5}, "concurrency must be an integer"),
        ({"queue": "q", "qps": 0}, "qps must be > 0"),
        ({"queue": "q", "qps": "fast"}, "qps must be a number"),
        ({"queue": "q", "max_retries": -1}, "max_retries must be >= 0"),
        ({"queue": "q", "broker": "localhost:6379"}, "broker must be a URL"),
        ({"queue": "q", "dead_letter_queue": "q"}, "dead_letter_queue must differ from queue"),
        ({"queue": "q", "keepalive": 0}, "keepalive must be > 0"),
    ],
)
def test_bad_options_name_the_problem(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        callq.TaskOptions(**kwargs)


def test_options_defaults():
    opts = callq.TaskOptions(queue="q", concurrency=8)
    assert opts.dlq == "q.dlq"
    assert opts.prefetch_limit == 10
    assert callq.TaskOptions(queue="q", concurrency=40).prefetch_limit == 50
    assert callq.TaskOptions(queue="q", concurrency=4, prefetch_buffer=0).prefetch_limit == 4


def test_decorator_accepts_an_options_object(mem_url):
    opts = callq.TaskOptions(queue="shared", broker=mem_url, qps=5)

    @callq.task(opts)
    def f(x):
        return x

    assert f.options is opts


def test_url_parsing_and_masking():
    url = BrokerURL.parse("amqp://user:s3cret@host:5673/vh?prefetch=10&confirm=yes")
    assert (url.scheme, url.host, url.port, url.username, url.password, url.path) == (
        "amqp", "host", 5673, "user", "s3cret", "/vh")
    assert "s3cret" not in str(url)
    assert url.int_param("prefetch", 1) == 10
    assert url.bool_param("confirm", False) is True
    with pytest.raises(ConfigError, match="unknown parameter"):
        url.check_params(["prefetch"])


def test_url_bad_values_are_clear():
    url = BrokerURL.parse("sqlite:///x.db?lease=soon")
    with pytest.raises(ConfigError, match="lease='soon' is invalid"):
        url.float_param("lease", 30)
    with pytest.raises(ConfigError, match="is not a URL"):
        BrokerURL.parse("redis")
    with pytest.raises(ConfigError, match="given twice"):
        BrokerURL.parse("redis://h/0?a=1&a=2")


def test_unknown_scheme_lists_installed_and_names_distribution(monkeypatch):
    import callq.plugins

    # a broker this project knows of but that is not installed here
    monkeypatch.setitem(callq.plugins.KNOWN_DISTRIBUTIONS, "acme", "callq-acme")
    with pytest.raises(BrokerNotFound) as info:
        callq.Connection("acme://localhost:5555")
    text = str(info.value)
    assert "pip install callq-acme" in text
    assert "memory" in text


def test_unknown_scheme_without_known_distribution():
    with pytest.raises(BrokerNotFound, match="no broker installed for URL scheme 'nosuch'"):
        callq.Connection("nosuch://x")


def test_broker_url_from_environment(monkeypatch, mem_url):
    monkeypatch.setenv("CALLQ_BROKER_URL", mem_url)

    @callq.task("env-q")
    def f(x):
        return x

    f.push(1)
    assert f.connection.url.raw == mem_url
    assert f.size() == 1
