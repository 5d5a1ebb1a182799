"""One connection shared by the threads of a worker: fetch, ack, publish and heartbeat at once."""

import queue
import threading
import time
from collections import Counter


def test_one_connection_used_from_many_threads(open_conn) -> None:
    conn = open_conn()
    n_pub, per = 4, 1000
    seen: Counter = Counter()
    to_ack: queue.Queue = queue.Queue()
    stop = threading.Event()
    errors: list[BaseException] = []
    beats = 0

    def guarded(fn):
        def run(*args):
            try:
                fn(*args)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
        return run

    @guarded
    def publish(p: int) -> None:
        for i in range(0, per, 10):
            conn.publish("t", [f"{p}-{j}".encode() for j in range(i, i + 10)])

    @guarded
    def fetch() -> None:
        while not stop.is_set():
            for d in conn.fetch("t", 25, 0.1):
                to_ack.put(d)

    @guarded
    def ack() -> None:
        while not (stop.is_set() and to_ack.empty()):
            batch = []
            try:
                batch.append(to_ack.get(timeout=0.05))
                while len(batch) < 50:
                    batch.append(to_ack.get_nowait())
            except queue.Empty:
                pass
            if batch:
                seen.update(d.body for d in batch)
                conn.ack(batch)

    @guarded
    def heartbeat() -> None:
        nonlocal beats
        while not stop.wait(0.05):
            conn.heartbeat()
            beats += 1

    threads = [threading.Thread(target=publish, args=(p,)) for p in range(n_pub)]
    workers = [threading.Thread(target=f) for f in (fetch, ack, heartbeat)]
    for t in workers + threads:
        t.start()
    for t in threads:
        t.join()
    deadline = time.monotonic() + 30
    while sum(seen.values()) < n_pub * per and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    for t in workers:
        t.join()
    assert not errors, errors
    assert set(seen) == {f"{p}-{i}".encode() for p in range(n_pub) for i in range(per)}
    assert max(seen.values()) == 1
    assert beats > 0
    assert conn.size("t") == 0
