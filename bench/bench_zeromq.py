"""callq-zeromq beside raw pyzmq PUSH/PULL doing the same work, same machine, same run.

    .venv/bin/python bench/bench_zeromq.py [--n 100000] [--rounds 3] [--json]

One rate per row (ratio = callq / raw, higher is better): ``n`` messages published and received
within one process over TCP loopback.

* publish 1-by-1 + consume: ``publish(queue, [body])`` per message while ``fetch(queue, 100)``
  drains on another thread, vs a raw PUSH socket sending ``[queue, body]`` frames and a raw
  PULL socket receiving them on another thread.
* publish batched (1000/call) + consume: ``publish(queue, 1000 bodies)``, same raw counterpart.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

import zmq

from callq.broker import Connection
from callq_zeromq.testing import free_port

BODY = b'{"i":1,"name":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx","_callq":{"id":"0123456789abcdef"}}'


def raw_run(n: int, batch: int) -> float:
    ctx = zmq.Context()
    port = free_port()
    pull = ctx.socket(zmq.PULL)
    pull.bind(f"tcp://127.0.0.1:{port}")
    push = ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port}")
    done = threading.Event()

    def receive() -> None:
        for _ in range(n):
            pull.recv_multipart()
        done.set()

    t = threading.Thread(target=receive)
    started = time.perf_counter()
    t.start()
    for start in range(0, n, batch):
        for _ in range(min(batch, n - start)):
            push.send_multipart((b"bench", BODY))
    done.wait(120)
    elapsed = time.perf_counter() - started
    t.join()
    push.close(0)
    pull.close(0)
    ctx.term()
    return n / elapsed


def callq_run(n: int, batch: int) -> float:
    url = f"zmq://127.0.0.1:{free_port()}"
    consumer, producer = Connection(url), Connection(url)
    consumer.fetch("bench", 1, 0.01)  # bind
    got = [0]

    def receive() -> None:
        while got[0] < n:
            got[0] += len(consumer.fetch("bench", 100, 1.0))

    t = threading.Thread(target=receive)
    started = time.perf_counter()
    t.start()
    for start in range(0, n, batch):
        producer.publish("bench", [BODY] * min(batch, n - start))
    t.join(120)
    elapsed = time.perf_counter() - started
    producer.close()
    consumer.close()
    return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    print(f"pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}; best of {args.rounds} alternating rounds", flush=True)
    rows: list[dict[str, Any]] = []
    for case, batch, n in (("publish 1-by-1 + consume", 1, args.n // 4), ("publish batched (1000/call) + consume", 1000, args.n)):
        ours = theirs = 0.0
        for _ in range(args.rounds):
            theirs = max(theirs, raw_run(n, batch))
            ours = max(ours, callq_run(n, batch))
        print(f"{case:<40} {ours:>10,.0f}/s   raw {theirs:>10,.0f}/s   ratio {ours / theirs:5.2f}", flush=True)
        rows.append({"bench": "zeromq", "case": case, "callq": ours, "raw": theirs, "unit": "calls/s"})
    if args.json:
        print("CALLQ_BENCH_JSON " + json.dumps(rows), flush=True)


if __name__ == "__main__":
    main()
