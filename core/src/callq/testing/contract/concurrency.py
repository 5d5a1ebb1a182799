"""Contract mixin: other processes and many threads publishing and consuming at once."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter

from ...broker import Capabilities, Connection
from .base import ContractBase, drain

_CHILD_PUBLISH = r"""
import sys
from callq.broker import Connection
url, queue, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
conn = Connection(url)
conn.publish(queue, [("from-child-%d" % i).encode() for i in range(n)])
conn.close()
print("ok", flush=True)
"""


class AbstractConcurrencyTests(ContractBase):
    """Other processes and many threads publishing and consuming at once."""

    def test_other_process_sees_published_messages(self, broker_url: str, connection: Connection,
                                                  queue: str, caps: Capabilities) -> None:
        self.require(caps, "distributed")
        out = subprocess.run([sys.executable, "-c", _CHILD_PUBLISH, broker_url, queue, "50"],
                             capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == "ok", out.stderr
        got = drain(connection, queue, 50)
        assert sorted(d.body for d in got) == sorted(f"from-child-{i}".encode() for i in range(50))

    def test_concurrent_producers_and_consumers_lose_and_duplicate_nothing(
        self, broker_url: str, connection: Connection, queue: str, caps: Capabilities
    ) -> None:
        n_prod, n_cons = 4, 4
        per = self.concurrency_messages // n_prod
        total = per * n_prod
        seen: Counter[bytes] = Counter()
        lock = threading.Lock()
        stop = threading.Event()
        errors: list[BaseException] = []

        primed = threading.Semaphore(0)

        def consume() -> None:
            conn = self.open(broker_url) if caps.distributed else connection
            try:
                first = self.prime(conn, queue)
                conn.ack(first)
                with lock:
                    seen.update(d.body for d in first)
                primed.release()
                while not stop.is_set():
                    got = conn.fetch(queue, 50, 0.2)
                    if got:
                        conn.ack(got)
                        with lock:
                            seen.update(d.body for d in got)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
            finally:
                if conn is not connection:
                    conn.close()

        def produce(p: int) -> None:
            conn = self.open(broker_url)
            try:
                for start in range(0, per, 25):
                    conn.publish(queue, [f"p{p}-{i}".encode() for i in range(start, min(per, start + 25))])
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
            finally:
                conn.close()

        if caps.distributed:
            connection.close()  # an idle subscriber (see prime) must not take a share
        consumers = [threading.Thread(target=consume) for _ in range(n_cons)]
        for t in consumers:
            t.start()
        for _ in consumers:  # brokers without a backlog drop what comes before a subscriber
            assert primed.acquire(timeout=30) or errors, "a consumer did not subscribe within 30 s"
        time.sleep(0.1)
        producers = [threading.Thread(target=produce, args=(p,)) for p in range(n_prod)]
        for t in producers:
            t.start()
        for t in producers:
            t.join()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with lock:
                if len(seen) >= total:
                    break
            time.sleep(0.1)
        time.sleep(0.5)
        stop.set()
        for t in consumers:
            t.join()
        assert not errors, errors
        expected = {f"p{p}-{i}".encode() for p in range(n_prod) for i in range(per)}
        assert set(seen) == expected, f"lost {len(expected - set(seen))}"
        dupes = sum(c - 1 for c in seen.values() if c > 1)
        assert dupes == 0, f"{dupes} duplicates without any crash"
