"""Worker and publisher run inside a network namespace by test_redis_hosts.py (not a test module).

    python hosts_worker.py work URL QUEUE OUT_FILE CONCURRENCY QPS   # QPS 0: unlimited
    python hosts_worker.py publish URL QUEUE COUNT
"""

import logging
import os
import sys
import time

import callq
from callq.broker import Connection
from callq.message import encode, new_meta


def work(url: str, queue: str, out_file: str, concurrency: int, qps: float) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(process)d %(name)s %(message)s")
    out = os.open(out_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    @callq.task(queue, broker=url, concurrency=concurrency, max_retries=0,
                qps=qps or None, distributed_qps=bool(qps))
    def record(i: int) -> None:
        time.sleep(0.002)
        os.write(out, f"{i} {time.time():.4f}\n".encode())

    record.consume()
    callq.wait()


def publish(url: str, queue: str, count: int) -> None:
    conn = Connection(url)
    try:
        for start in range(0, count, 500):
            conn.publish(queue, [encode({"i": i}, new_meta()) for i in range(start, min(count, start + 500))])
    finally:
        conn.close()


if __name__ == "__main__":
    if sys.argv[1] == "work":
        work(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), float(sys.argv[6]))
    else:
        publish(sys.argv[2], sys.argv[3], int(sys.argv[4]))
