"""Property-based tests of decoding and admission: no input makes them raise anything but
MalformedMessage, and every admitted message has metadata of the right types."""

from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import callq
from callq.broker import Delivery
from callq.consumer import Consumer
from callq.message import MalformedMessage, decode

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
meta_fields = st.dictionaries(
    st.sampled_from(["id", "published_at", "eta", "expires_at", "attempt", "last_error", "parent", "x"]),
    json_values, max_size=6)
payloads = st.dictionaries(st.text(max_size=6), json_values, max_size=4).flatmap(
    lambda kwargs: st.one_of(st.just(kwargs), meta_fields.map(lambda meta: {**kwargs, "_callq": meta}),
                             json_values.map(lambda meta: {**kwargs, "_callq": meta})))


def _consumer() -> Consumer:
    @callq.task("fuzz", broker="memory://fuzz", expires=60, misfire_grace=5)
    def f(a=None, b=None, **rest):
        return None

    c = Consumer(f)
    for control in c.controls.start:
        control.start()
    return c


CONSUMER = _consumer()


def _check_admitted(body: bytes) -> None:
    try:
        kwargs, meta = decode(body)
    except MalformedMessage:
        return
    for name in ("published_at", "eta", "expires_at"):
        value = meta.get(name)
        assert value is None or (type(value) in (int, float) and math.isfinite(value))
    assert meta.get("attempt") is None or type(meta["attempt"]) is int
    assert meta.get("id") is None or type(meta["id"]) is str
    call = callq.CallContext(CONSUMER, Delivery(body, "fuzz", 1), kwargs, meta)
    CONSUMER.admit(call)  # must not raise: run, hold or a verdict
    assert call.attempt >= 0


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_are_malformed(body):
    _check_admitted(body)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads)
def test_arbitrary_json_with_any_metadata_decodes_or_is_malformed(payload):
    body = json.dumps(payload, allow_nan=True).encode()
    _check_admitted(body)


def test_the_reported_metadata_is_malformed():
    for meta in ({"eta": "tomorrow"}, {"attempt": "x"}, {"expires_at": "soon"}, {"published_at": True},
                 {"attempt": -1}, {"eta": 1e300}, {"id": 5}):
        body = json.dumps({"a": 3, "_callq": meta}).encode()
        try:
            decode(body)
        except MalformedMessage as exc:
            assert next(iter(meta)) in str(exc)
        else:
            raise AssertionError(f"accepted {meta}")
