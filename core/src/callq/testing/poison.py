"""Poison messages: a mix of valid calls and bodies no worker may choke on.

``poison_mix()`` builds raw bodies for the task ``poison_target(a: int, b=None)``: valid
calls (each with its own ``a``) and invalid bodies of many kinds (not JSON, not an object,
metadata of the wrong type, unknown or missing arguments, invalid UTF-8, huge numbers and NaN
in metadata, nested junk). ``PoisonContract`` (part of :class:`callq.testing.BrokerContract`)
publishes them through a broker, runs a real worker and checks that every valid call ran,
every invalid body is in the dead-letter queue with a reason and its raw content, and the
worker never stopped. A plugin overrides ``inject_foreign_entries`` to add entries of the
wrong shape written straight with its client library (a stream entry without callq's field,
a key of the wrong type, an odd AMQP message): they must be dead-lettered too.
"""

from __future__ import annotations

import base64
import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..broker import Connection

_J = json.JSONEncoder(allow_nan=True, separators=(",", ":")).encode


def _obj(i: int, meta: Any = None, **extra: Any) -> bytes:
    payload: dict[str, Any] = {"a": i, **extra}
    if meta is not None:
        payload["_callq"] = meta
    return _J(payload).encode()


def _meta_ok(i: int) -> dict[str, Any]:
    return {"id": f"poison-{i:08x}", "published_at": time.time(), "attempt": 0}


#: kind -> body for the i-th valid call (``a`` is i)
VALID: dict[str, Callable[[int], bytes]] = {
    "plain": lambda i: _obj(i),
    "with metadata": lambda i: _obj(i, _meta_ok(i), b="ü ✓"),
    "empty metadata": lambda i: _obj(i, {}),
    "extra metadata (a plugin's)": lambda i: _obj(i, {**_meta_ok(i), "trace": {"span": [1, 2]}}),
    "eta in the past": lambda i: _obj(i, {**_meta_ok(i), "eta": time.time() - 5}),
    "nested argument": lambda i: _obj(i, b={"x": [1, {"y": None, "z": [[[[]]]]}], "s": "\u0000\u2028"}),
    "big integer argument": lambda i: _obj(i, b=10**40 + i),
    "long argument": lambda i: _obj(i, b="x" * 20_000),
}

#: kind -> body for the i-th invalid one (every body unique)
INVALID: dict[str, Callable[[int], bytes]] = {
    "not JSON": lambda i: b"not json %d" % i,
    "truncated JSON": lambda i: b'{"a": %d, "b": [1, 2' % i,
    "JSON array": lambda i: b"[%d, 2]" % i,
    "JSON string": lambda i: b'"call %d"' % i,
    "JSON number": lambda i: b"%d" % (i + 10**6),
    "byte order mark": lambda i: b'\xef\xbb\xbf{"a": %d}' % i,
    "invalid UTF-8": lambda i: b'{"a": %d, "b": "\xff\xfe\xc3("}' % i,
    "eta not a time": lambda i: _obj(i, {"eta": "tomorrow"}),
    "attempt not an integer": lambda i: _obj(i, {"attempt": "x"}),
    "expires_at not a time": lambda i: _obj(i, {"expires_at": "soon"}),
    "published_at a list": lambda i: _obj(i, {"published_at": [i]}),
    "id a number": lambda i: _obj(i, {"id": i}),
    "metadata not an object": lambda i: _obj(i, f"meta {i}"),
    "huge eta": lambda i: b'{"a": %d, "_callq": {"eta": 1e400}}' % i,
    "huge attempt": lambda i: _obj(i, {"attempt": 10**30 + i}),
    "negative attempt": lambda i: _obj(i, {"attempt": -1 - i}),
    "NaN eta": lambda i: _obj(i, {"eta": float("nan"), "id": f"nan-{i}"}),
    "nested junk in metadata": lambda i: _obj(i, {"eta": {"x": [1, {"y": [None, i]}]}}),
    "unknown argument": lambda i: _obj(i, unknown_argument=i),
    "missing argument": lambda i: _J({"b": f"no a {i}"}).encode(),
    "argument named like metadata only": lambda i: _J({"_callq": {"id": f"only-meta-{i}"}}).encode(),
}


@dataclass
class PoisonMix:
    bodies: list[bytes]                      # in publish order (shuffled)
    valid: dict[int, str] = field(default_factory=dict)        # a -> kind
    invalid: dict[bytes, str] = field(default_factory=dict)    # body -> kind


def poison_mix(valid: int = 1000, invalid: int = 1000, seed: int = 9) -> PoisonMix:
    """``valid`` calls (``a`` = 0..valid-1) and ``invalid`` bodies, every kind in turn, shuffled."""
    mix = PoisonMix(bodies=[])
    vkinds, ikinds = list(VALID.items()), list(INVALID.items())
    for i in range(valid):
        kind, make = vkinds[i % len(vkinds)]
        mix.valid[i] = kind
        mix.bodies.append(make(i))
    for j in range(invalid):
        kind, make = ikinds[j % len(ikinds)]
        body = make(valid + j)
        mix.invalid[body] = kind
        mix.bodies.append(body)
    mix.invalid[b""] = "empty body"
    mix.bodies.append(b"")
    random.Random(seed).shuffle(mix.bodies)
    return mix


def raw_of(dead: dict[str, Any]) -> bytes:
    """The original body kept in a dead-letter entry's ``_callq.dead``."""
    if "raw_base64" in dead:
        return base64.b64decode(dead["raw_base64"])
    return dead["raw"].encode()


class PoisonContract:
    """The poison-message part of the broker contract (mixed into ``BrokerContract``)."""

    poison_valid: int = 1500
    poison_invalid: int = 1500
    poison_timeout: float = 60.0

    def inject_foreign_entries(self, broker_url: str, queue: str, phase: str) -> int:
        """Write entries of the wrong shape into ``queue`` with the client library; return how many.

        ``phase`` is "before" (the queue is empty, no worker runs yet) or "among" (half of
        the mix is published, the worker runs). Each must end up in the dead-letter queue.
        """
        return 0

    def test_poison_messages_are_dead_lettered_and_the_worker_carries_on(
            self, broker_url: str, connection: Connection, queue: str) -> None:
        from ..task import task

        mix = poison_mix(self.poison_valid, self.poison_invalid)
        dlq = f"{queue}.dlq"
        ran: set[int] = set()
        lock = threading.Lock()

        def poison_target(a: int, b: Any = None) -> None:
            with lock:
                ran.add(a)

        t = task(queue, broker=broker_url, concurrency=8, max_retries=0)(poison_target)
        if not connection.capabilities.distributed:
            connection.close()  # one process-wide consumer per endpoint: the worker's
        connection = t.connection  # the worker's own (brokers that are not distributed need it)
        self.prime(connection, dlq)  # type: ignore[attr-defined]
        foreign = self.inject_foreign_entries(broker_url, queue, "before")
        consumer = t.consume()
        try:
            deadline = time.monotonic() + 15
            while foreign and consumer.stats().malformed < foreign and time.monotonic() < deadline:
                time.sleep(0.05)
            half = len(mix.bodies) // 2
            for n, part in enumerate((mix.bodies[:half], mix.bodies[half:])):
                for start in range(0, len(part), 200):
                    connection.publish(queue, part[start:start + 200])
                if n == 0:
                    foreign += self.inject_foreign_entries(broker_url, queue, "among")
            expected_dead = len(mix.invalid) + foreign
            dead: list[dict[str, Any]] = []
            deadline = time.monotonic() + self.poison_timeout
            while (len(ran) < len(mix.valid) or len(dead) < expected_dead) and time.monotonic() < deadline:
                got = connection.fetch(dlq, 500, 0.2)
                if got:
                    connection.ack(got)
                    dead += [json.loads(d.body)["_callq"]["dead"] for d in got]
                assert consumer.running, f"the worker stopped: {consumer.error!r}"
            assert consumer.running and consumer.error is None, f"the worker stopped: {consumer.error!r}"
            missing = set(mix.valid) - ran
            assert not missing, (f"{len(missing)} valid call(s) never ran, e.g. "
                                 f"{[mix.valid[a] for a in sorted(missing)[:5]]}")
            assert ran <= set(mix.valid), f"calls ran that were not published: {sorted(ran - set(mix.valid))[:5]}"
            assert all(d.get("reason") for d in dead), "a dead letter without a reason"
            raws = [raw_of(d) for d in dead]
            lost = [kind for body, kind in mix.invalid.items() if body not in set(raws)]
            assert not lost, f"{len(lost)} invalid bod(ies) not dead-lettered with their raw content: {lost[:5]}"
            others = [r for r in raws if r not in mix.invalid]
            assert len(others) >= foreign, (f"{foreign} foreign entr(ies) injected, {len(others)} of them "
                                            f"dead-lettered: {others[:3]}")
            assert consumer.stats().malformed >= expected_dead
        finally:
            t.stop(timeout=30)
