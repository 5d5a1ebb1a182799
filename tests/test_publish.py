import datetime as dt
import json
import time

import pytest

import callq
from callq.errors import ConfigError


@pytest.fixture
def add(mem_url):
    @callq.task("add", broker=mem_url)
    def add(a: int, b: int = 1) -> int:
        return a + b

    return add


def _bodies(task, n):
    conn = task.connection
    got = conn.fetch(task.options.queue, n, 1.0)
    conn.ack(got)
    return [json.loads(d.body) for d in got]


def test_function_stays_directly_callable(add):
    assert add(2, 3) == 5
    assert add.__name__ == "add"
    assert add.size() == 0


def test_push_binds_to_signature(add):
    msg_id = add.push(3, b=6)
    (body,) = _bodies(add, 1)
    meta = body.pop("_callq")
    assert body == {"a": 3, "b": 6}
    assert meta["id"] == msg_id
    assert meta["attempt"] == 0
    assert abs(meta["published_at"] - time.time()) < 5


def test_defaults_are_not_sent(add):
    add.push(1)
    (body,) = _bodies(add, 1)
    body.pop("_callq")
    assert body == {"a": 1}


def test_wrong_arguments_fail_at_publish_time(add):
    with pytest.raises(TypeError, match="missing a required argument: 'a'"):
        add.push()
    with pytest.raises(TypeError, match="unexpected keyword argument 'c'"):
        add.push(1, c=2)
    with pytest.raises(TypeError, match="too many positional arguments"):
        add.push(1, 2, 3)
    assert add.size() == 0


def test_non_json_values_fail_naming_the_argument(add):
    with pytest.raises(TypeError, match="argument 'b' is not JSON-serialisable .*set"):
        add.push(1, b={1, 2})
    with pytest.raises(TypeError, match="argument 'a' is not JSON-serialisable"):
        add.push(float("nan"))
    assert add.size() == 0


def test_reserved_name_is_refused(mem_url):
    @callq.task("kw", broker=mem_url)
    def f(**kw):
        return kw

    with pytest.raises(TypeError, match="reserved"):
        f.push(_callq=1)
    f.push(x=1, y="z")
    (body,) = _bodies(f, 1)
    body.pop("_callq")
    assert body == {"x": 1, "y": "z"}


def test_unsupported_signatures_are_refused_at_decoration(mem_url):
    with pytest.raises(ConfigError, match=r"\*args cannot travel"):
        @callq.task("bad", broker=mem_url)
        def f(*args):
            pass

    with pytest.raises(ConfigError, match="reserved"):
        @callq.task("bad", broker=mem_url)
        def h(_callq):
            pass

    with pytest.raises(ConfigError, match="positional-only"):
        @callq.task("bad", broker=mem_url)
        def g(a, /):
            pass


def test_publish_with_options(add):
    add.publish({"a": 1}, id="fixed-id", priority=5)
    (body,) = _bodies(add, 1)
    assert body["_callq"]["id"] == "fixed-id"
    with pytest.raises(TypeError, match="must be a mapping"):
        add.publish([1, 2])
    with pytest.raises(TypeError, match="countdown or eta, not both"):
        add.publish({"a": 1}, countdown=1, eta=time.time())
    with pytest.raises(TypeError, match="timezone-aware"):
        add.publish({"a": 1}, eta=dt.datetime.now())


def test_publish_countdown_uses_native_delay(add):
    add.publish({"a": 1}, countdown=1.0)
    conn = add.connection
    assert conn.fetch("add", 1, 0.3) == []
    got = conn.fetch("add", 1, 3.0)
    assert len(got) == 1
    conn.ack(got)


def test_push_many_batches_tuples_and_dicts(add):
    ids = add.push_many([(1, 2), {"a": 3}, (4,)] * 700)
    assert len(ids) == 2100 and len(set(ids)) == 2100
    assert add.size() == 2100
    with pytest.raises(TypeError, match="tuple of positional arguments or a dict"):
        add.push_many([1])
    assert add.clear() == 2100
    assert add.size() == 0
