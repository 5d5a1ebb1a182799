"""Several real processes on one file: persistence, sharing, kill -9."""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from callq.testing import drain

_PUBLISH = r"""
import os, sys
from callq.broker import Connection
url, queue, tag, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
conn = Connection(url)
i = 0
while i < n:
    size = 1 if i % 3 == 0 else min(37, n - i)  # single and batched publishes mixed
    conn.publish(queue, [f"{tag}-{j}".encode() for j in range(i, i + size)], priority=i % 4)
    i += size
print("ok", flush=True)
if sys.argv[5:] == ["hang"]:
    import time; time.sleep(600)
os._exit(0)  # no close: nothing may depend on a clean exit
"""

_CONSUME = r"""
import os, sys, time
from callq.broker import Connection
url, queue, out, stop = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
conn = Connection(url)
fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
conn.size(queue)
print("ready", flush=True)
while True:
    got = conn.fetch(queue, 20, 0.2)
    if got:
        os.write(fd, b"".join(d.body + b"\n" for d in got))  # recorded, then acked
        conn.ack(got)
        time.sleep(0.005)  # work takes time: no one process can take the whole queue
    elif os.path.exists(stop):
        break
conn.close()
"""


def _spawn(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _received(outs: list[Path]) -> Counter:
    seen: Counter = Counter()
    for out in outs:
        if out.exists():
            seen.update(line for line in out.read_text().splitlines() if line)
    return seen


def test_messages_survive_process_restart(db_url: str, tmp_path: Path, open_conn) -> None:
    producer = _spawn(_PUBLISH, db_url, "q", "p", 300)
    out, err = producer.communicate(timeout=60)
    assert producer.returncode == 0 and out.strip() == "ok", err
    # a new process reads everything the exited one published, then stops when idle
    received = tmp_path / "restart.out"
    consumer = _spawn(_CONSUME.replace("elif os.path.exists(stop):", "else:"), db_url, "q", received, "-")
    _, err = consumer.communicate(timeout=60)
    assert consumer.returncode == 0, err
    assert sorted(received.read_text().split()) == sorted(f"p-{i}" for i in range(300))
    assert open_conn().size("q") == 0


def test_killed_publisher_loses_nothing_it_published(db_url: str, open_conn) -> None:
    producer = _spawn(_PUBLISH, db_url, "q", "k", 200, "hang")
    try:
        assert producer.stdout.readline().strip() == "ok"
    finally:
        os.kill(producer.pid, signal.SIGKILL)
        producer.wait()
    got = drain(open_conn(), "q", 200)
    assert sorted(d.body for d in got) == sorted(f"k-{i}".encode() for i in range(200))


def test_processes_share_one_file_without_loss_or_duplicates(db_url: str, tmp_path: Path) -> None:
    n_prod, per, n_cons = 3, 1500, 3
    stop = tmp_path / "stop"
    outs = [tmp_path / f"consumer-{c}.out" for c in range(n_cons)]
    consumers = [_spawn(_CONSUME, db_url, "shared", out, stop) for out in outs]
    for c in consumers:  # all polling before anything is published, so each can take a share
        assert c.stdout.readline().strip() == "ready"
    producers = [_spawn(_PUBLISH, db_url, "shared", f"p{p}", per) for p in range(n_prod)]
    try:
        for p in producers:
            out, err = p.communicate(timeout=90)
            assert p.returncode == 0 and out.strip() == "ok", err
        total = n_prod * per
        deadline = time.monotonic() + 60
        while len(_received(outs)) < total and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.touch()
        for c in consumers:
            _, err = c.communicate(timeout=30)
            assert c.returncode == 0, err
    finally:
        for proc in consumers + producers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    seen = _received(outs)
    expected = {f"p{p}-{i}" for p in range(n_prod) for i in range(per)}
    assert set(seen) == expected, f"lost {len(expected - set(seen))}"
    assert sum(c - 1 for c in seen.values()) == 0, "duplicates without any crash"
    assert all(_received([out]) for out in outs), "every consumer process took a share"


_VICTIM = r"""
import os, sys, time
from callq.broker import Connection
url, queue, out = sys.argv[1], sys.argv[2], sys.argv[3]
conn = Connection(url)
fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
done = 0
while done < 200:
    got = conn.fetch(queue, 20, 1.0)
    os.write(fd, b"".join(d.body + b"\n" for d in got))
    conn.ack(got)
    done += len(got)
ran = conn.fetch(queue, 20, 1.0)  # ran but not acked: must run again elsewhere
os.write(fd, b"".join(d.body + b"\n" for d in ran))
held = conn.fetch(queue, 20, 1.0)  # fetched, not run: must not be lost
print(len(ran), len(held), flush=True)
time.sleep(600)
"""


def test_kill_minus_9_consumer_loses_nothing(db_url: str, tmp_path: Path) -> None:
    total = 3000
    stop = tmp_path / "stop"
    outs = [tmp_path / f"c{c}.out" for c in range(3)]
    producer = _spawn(_PUBLISH, db_url, "crash", "m", total)
    out, err = producer.communicate(timeout=60)
    assert out.strip() == "ok", err
    victim = _spawn(_VICTIM, db_url, "crash", outs[0])
    survivors = []
    try:
        assert victim.stdout.readline().split() == ["20", "20"]
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        killed = time.monotonic()
        survivors = [_spawn(_CONSUME, db_url, "crash", out, stop) for out in outs[1:]]
        deadline = time.monotonic() + 60
        while len(_received(outs)) < total and time.monotonic() < deadline:
            time.sleep(0.05)
        recovered_after = time.monotonic() - killed
        stop.touch()
        for c in survivors:
            c.communicate(timeout=30)
    finally:
        for proc in [victim, *survivors]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    seen = _received(outs)
    lost = {f"m-{i}" for i in range(total)} - set(seen)
    assert not lost, f"lost {len(lost)} after kill -9"
    dupes = sum(c - 1 for c in seen.values())
    print(f"kill -9 of a consumer: {dupes} duplicate(s), all back after {recovered_after:.1f}s")
    assert dupes == 20  # exactly the batch that ran but was not acked
    assert 0.8 <= recovered_after < 5.0  # the victim's leases (1 s) had to end first
