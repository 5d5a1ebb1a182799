"""callq-nats beside raw nats-py doing the same JetStream work, same machine, same run.

    .venv/bin/python bench/bench_nats.py [--single 1000] [--batched 20000] [--consume 20000] [--rounds 3] [--json]

Rows (ratio = callq / raw, higher is better):

* publish 1-by-1: ``Connection.publish(queue, [body])`` vs raw ``await js.publish`` (waits for the PubAck).
* publish batched: ``publish(queue, 1000 bodies)`` vs raw ``publish_async`` x 1000 + gather of the PubAcks.
* consume: ``fetch(100)`` + ``ack(batch)`` vs raw ``PullSubscription.fetch(100)``, ``msg.ack()`` each
  and one flush per batch (both on the same kind of work-queue stream and durable pull consumer).

Every stream lives under a fresh prefix and is deleted at the end (the server is this machine's
shared nats-server, started if down).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from typing import Any

import nats
from nats.js import api

from callq.broker import Connection
from callq_nats.testing import NATS, delete_streams, ensure_running

BODY = b'{"i":1,"name":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx","_callq":{"id":"0123456789abcdef"}}'


class Raw:
    def __init__(self, prefix: str) -> None:
        self.subject = f"{prefix}.raw"
        self.stream = f"{prefix}_raw"

    async def setup(self) -> None:
        self.nc = await nats.connect(NATS)
        self.js = self.nc.jetstream()
        await self.js.add_stream(api.StreamConfig(name=self.stream, subjects=[self.subject],
                                                  retention=api.RetentionPolicy.WORK_QUEUE,
                                                  storage=api.StorageType.FILE))
        await self.js.add_consumer(self.stream, api.ConsumerConfig(durable_name="raw", ack_policy=api.AckPolicy.EXPLICIT,
                                                                   ack_wait=30, max_deliver=-1, max_ack_pending=20000))
        self.sub = await self.js.pull_subscribe_bind(durable="raw", stream=self.stream)

    async def single(self, n: int) -> int:
        for _ in range(n):
            await self.js.publish(self.subject, BODY, headers={"Nats-Msg-Id": uuid.uuid4().hex})
        return n

    async def batched(self, n: int) -> int:
        for start in range(0, n, 1000):
            futs = [await self.js.publish_async(self.subject, BODY, headers={"Nats-Msg-Id": uuid.uuid4().hex})
                    for _ in range(min(1000, n - start))]
            await asyncio.gather(*futs)
        return n

    async def consume(self, n: int) -> int:
        got = 0
        while got < n:
            msgs = await self.sub.fetch(100, timeout=2)
            for m in msgs:
                await m.ack()
            await self.nc.flush()
            got += len(msgs)
        return got

    async def purge(self) -> None:
        await self.js.purge_stream(self.stream)


def timed(fn: Any) -> float:
    started = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--single", type=int, default=1000)
    ap.add_argument("--batched", type=int, default=20000)
    ap.add_argument("--consume", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    ensure_running()
    prefix = f"cqbench-{uuid.uuid4().hex[:8]}"
    loop = asyncio.new_event_loop()
    raw = Raw(prefix)
    loop.run_until_complete(raw.setup())
    conn = Connection(f"{NATS}?prefix={prefix}")
    queue = "bench"
    rows: list[dict[str, Any]] = []
    print(f"nats-py {nats.__version__ if hasattr(nats, '__version__') else ''} against {raw.nc.connected_server_version}; "
          f"best of {args.rounds} alternating rounds", flush=True)
    try:
        def best(ours: Any, theirs: Any, n: int, fill: bool = False) -> tuple[float, float]:
            per = max(1, n // args.rounds)
            b_ours = b_raw = 0.0
            for _ in range(args.rounds):
                if fill:
                    for start in range(0, per, 1000):
                        conn.publish(queue, [BODY] * min(1000, per - start))
                    loop.run_until_complete(raw.batched(per))
                b_raw = max(b_raw, timed(lambda: loop.run_until_complete(theirs(per))))
                b_ours = max(b_ours, timed(lambda: ours(per)))
                conn.purge(queue)
                loop.run_until_complete(raw.purge())
            return b_ours, b_raw

        def c_single(n: int) -> int:
            for _ in range(n):
                conn.publish(queue, [BODY])
            return n

        def c_batched(n: int) -> int:
            for start in range(0, n, 1000):
                conn.publish(queue, [BODY] * min(1000, n - start))
            return n

        def c_consume(n: int) -> int:
            got = 0
            while got < n:
                ds = conn.fetch(queue, 100, 2.0)
                conn.ack(ds)
                got += len(ds)
            return got

        for case, (ours, theirs) in (
            ("publish 1-by-1", best(c_single, raw.single, args.single)),
            ("publish batched (1000/call)", best(c_batched, raw.batched, args.batched)),
            ("consume (fetch 100 + ack)", best(c_consume, raw.consume, args.consume, fill=True)),
        ):
            print(f"{case:<34} {ours:>10,.0f}/s   raw {theirs:>10,.0f}/s   ratio {ours / theirs:5.2f}", flush=True)
            rows.append({"bench": "nats", "case": case, "callq": ours, "raw": theirs, "unit": "calls/s"})
    finally:
        conn.close()
        loop.run_until_complete(raw.nc.close())
        loop.close()
        delete_streams(prefix)
    if args.json:
        print("CALLQ_BENCH_JSON " + json.dumps(rows), flush=True)


if __name__ == "__main__":
    main()
