import dataclasses
import datetime as dt
import enum
import json
import time
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import callq
from callq.errors import ConfigError
from callq.message import decode, encode, new_meta


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


# --- the push fast path: orjson for plain values, hooks read again when plugins change ----------


@given(st.dictionaries(st.text(max_size=8).filter(lambda k: k != "_callq"),
                       st.none() | st.booleans() | st.integers() | st.text(max_size=20)
                       | st.floats(allow_nan=False, allow_infinity=False), max_size=5))
@settings(max_examples=300, deadline=None)
def test_encode_writes_plain_values_as_the_stdlib_would(kwargs):
    meta = new_meta()
    stdlib = json.dumps({**kwargs, "_callq": meta}, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    body = encode(kwargs, meta)
    assert json.loads(body) == json.loads(stdlib)
    if all(not isinstance(v, int) or -(2**63) <= v < 2**64 for v in kwargs.values()):
        assert decode(body) == (kwargs, meta)  # (orjson reads wider integers as floats)


class Color(enum.Enum):
    RED = "red"


class Size(enum.IntEnum):
    BIG = 3


@dataclasses.dataclass
class Point:
    x: int


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), dt.datetime.now(dt.timezone.utc),
                                   dt.date(2026, 1, 1), uuid.uuid4(), Color.RED, Point(1), b"bytes"])
def test_encode_refuses_what_json_cannot_carry(value):
    with pytest.raises(TypeError, match="argument 'v' is not JSON-serialisable"):
        encode({"v": value}, new_meta())


def test_encode_keeps_the_stdlib_for_the_rest():
    """Big integers, lone surrogates' neighbours, int subclasses and nested values: as before."""
    meta = new_meta()
    for value in (2**70, -(2**64), Size.BIG, [1, [2.5, None]], {"k": {"n": "\u2028é😀"}}, "\u2028é😀"):
        assert json.loads(encode({"v": value}, meta)) == {"v": value, "_callq": meta}
    assert json.loads(encode({"v": 1}, {**meta, "eta": 1.5, "parent": "p"}))["_callq"]["parent"] == "p"
    with pytest.raises(TypeError, match="metadata is not JSON-serialisable"):
        encode({"v": 1}, {**meta, "eta": float("nan")})


def test_push_checks_required_keyword_only_arguments(mem_url):
    @callq.task("kwonly", broker=mem_url)
    def f(a, *, b):
        return a

    with pytest.raises(TypeError, match="missing a required argument: 'b'"):
        f.push(1)
    f.push(1, b=2)
    assert _bodies(f, 5)[0]["b"] == 2


class _Hooks:
    def __init__(self):
        self.before, self.after, self.wrapped = [], [], 0

    @callq.hookimpl
    def callq_before_publish(self, queue, messages):
        for m in messages:
            m["_callq"]["trace"] = "t"
        self.before.append(len(messages))

    @callq.hookimpl
    def callq_after_publish(self, queue, ids, messages):
        self.after.append(list(ids))

    @callq.hookimpl(wrapper=True)
    def callq_publish(self, queue, bodies, delay, priority):
        self.wrapped += len(bodies)
        return (yield)


def test_plugins_registered_after_pushes_still_see_them(add):
    add.push(1)
    add.push_many([(2,), (3,)])  # the fast path is warm: no plugin
    hooks = _Hooks()
    callq.register(hooks, name="test-late-publish-hooks")
    try:
        h = add.push(4)
        ids = add.push_many([(5,), (6,)])
    finally:
        callq.unregister(hooks)
    add.push(7)
    assert hooks.before == [1, 2] and hooks.after == [[h], list(ids)] and hooks.wrapped == 3
    traces = {b["a"]: b["_callq"].get("trace") for b in _bodies(add, 20)}
    assert traces == {1: None, 2: None, 3: None, 4: "t", 5: "t", 6: "t", 7: None}


def test_push_many_ids_are_unique_and_in_order(add):
    ids = add.push_many((i, i) for i in range(2500))
    assert len(set(ids)) == 2500 and all(isinstance(i, str) and len(i) == 32 for i in ids)
    assert [b["_callq"]["id"] for b in _bodies(add, 2500)] == ids


def test_call_ids_sort_by_time_and_never_repeat_across_processes() -> None:
    """Ids are 32 hex digits, the first 12 the publish time in ms: a SQL store keyed by id
    appends instead of writing a random page per record. Forked children never share ids."""
    import os
    import re

    from callq.message import new_id

    earlier = [new_id() for _ in range(1000)]
    time.sleep(0.003)
    later = [new_id() for _ in range(1000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in earlier + later)
    assert max(earlier) < min(later)
    assert abs(int(later[0][:12], 16) / 1000 - time.time()) < 5
    read, write = os.pipe()
    pids = []
    for _ in range(3):
        pid = os.fork()
        if pid == 0:
            for _ in range(2000 // 125):  # 4,000 bytes a write: atomic on a pipe, never interleaved
                os.write(write, "".join(new_id() for _ in range(125)).encode())
            os._exit(0)
        pids.append(pid)
    os.close(write)
    data = b""
    while chunk := os.read(read, 1 << 16):  # until every child closed its end
        data += chunk
    os.close(read)
    for pid in pids:
        assert os.waitpid(pid, 0)[1] == 0
    children = [data[i:i + 32] for i in range(0, len(data), 32)]
    mine = [new_id().encode() for _ in range(2000)]
    assert len(children) == 6000
    assert len(set(children + mine)) == 8000
