"""Server restart tests on a real server: restart it mid-run; consumers reconnect, nothing is lost.

For plugin authors whose server can be stopped and started by the tests::

    def restart() -> None:
        try:
            stop_my_server()
        finally:
            start_my_server()          # running again whatever the outcome

    report = run_restart_scenario(url, restart)
    print(report)
    assert report.lost == 0 and report.fetch_errors == 0

``restart`` must return only once the server answers again. Cleaning up the queue is the
caller's job (a fixture), since the server may be in any state when a test fails.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..broker import Connection, Delivery
from .contract import drain, fresh_queue_name

log = logging.getLogger("callq.testing.restart")


@dataclass(frozen=True)
class RestartReport:
    before: int              # consumed before the restart
    held: int                # fetched, unacked when the server went away
    stored: int              # waiting in the queue when the server went away
    after: int               # published after the restart
    lost: int                # expected messages that never came
    held_acked: int | None   # what ``ack`` of the held deliveries returned after the restart
    held_redelivered: int    # held messages delivered again after the restart
    fetch_errors: int        # fetches that raised (tolerated, retried)
    publish_errors: int      # publishes after the restart that raised (tolerated, retried)
    loop_error: BaseException | None  # what stopped the consumer loop, if anything
    size_after: int          # ``size(queue)`` once everything came
    seconds: float

    def __str__(self) -> str:
        return (f"restart test: {self.before} before, {self.held} held, {self.stored} stored, "
                f"{self.after} after, lost {self.lost}, held acked {self.held_acked}, held redelivered "
                f"{self.held_redelivered}, fetch errors {self.fetch_errors}, publish errors "
                f"{self.publish_errors}, loop error {self.loop_error!r}, size after {self.size_after}, "
                f"{self.seconds:.1f}s")


class _Loop:
    """Fetch and ack in a thread; fetch errors are counted and retried like the runner does."""

    def __init__(self, conn: Connection, queue: str, batch: int, heartbeat: bool) -> None:
        self.conn, self.queue, self.batch, self.heartbeat = conn, queue, batch, heartbeat
        self.seen: list[bytes] = []
        self.fetch_errors = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True, name="callq-restart-loop")
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    got = self.conn.fetch(self.queue, self.batch, 0.2)
                except Exception as exc:  # noqa: BLE001 - the runner retries fetch the same way
                    self.fetch_errors += 1
                    log.warning("fetch failed: %s", exc)
                    time.sleep(0.2)
                    continue
                if got:
                    self.conn.ack(got)
                    self.seen.extend(d.body for d in got)
                if self.heartbeat:
                    self.conn.heartbeat()
        except BaseException as exc:  # noqa: BLE001 - reported
            self.error = exc


def _wait(until: Callable[[], bool], seconds: float, step: float = 0.05) -> None:
    deadline = time.monotonic() + seconds
    while not until() and time.monotonic() < deadline:
        time.sleep(step)


def run_restart_scenario(url: str, restart: Callable[[], None], *, queue: str | None = None,
                         before: int = 100, held: int = 5, stored: int = 50, stored_delay: float = 0.0,
                         after: int = 300, ack_held: bool = False, held_come_back: bool = True,
                         fetch_during_restart: bool = False, heartbeat: bool = False, batch: int = 20,
                         timeout: float = 30.0) -> RestartReport:
    """Restart the server under a consumer (a thread fetching and acking on one connection).

    ``before`` messages are published and consumed; ``held`` are fetched and left unacked;
    ``stored`` are published (with ``stored_delay``) and wait in the queue; then ``restart()``
    runs, with the consumer fetching through it if ``fetch_during_restart``. After it the held
    deliveries are acked if ``ack_held``, ``after`` messages are published in batches of 50
    (retried while the producer reconnects) and the consumer is given ``timeout`` seconds to get
    the stored, the after and, if ``held_come_back``, the held messages. Use ``held=0,
    stored=0`` for a server that keeps nothing across a restart.
    """
    queue = queue or fresh_queue_name("cq-restart")
    started = time.monotonic()
    consumer, producer = Connection(url), Connection(url)
    loop = _Loop(consumer, queue, batch, heartbeat)
    held_bodies: set[bytes] = set()
    held_acked: int | None = None
    publish_errors = 0
    try:
        first = [f"before-{i}".encode() for i in range(before)]
        producer.publish(queue, first)
        loop.start()
        _wait(lambda: set(first) <= set(loop.seen), 10, 0.02)
        loop.stop(5)
        if len(set(first) & set(loop.seen)) < before or loop.error is not None:
            raise AssertionError(f"{before - len(set(first) & set(loop.seen))} of {before} never came "
                                 f"before the restart; loop error {loop.error!r}")
        deliveries: list[Delivery] = []
        if held:
            producer.publish(queue, [f"kept-{i}".encode() for i in range(held)])
            deliveries = drain(consumer, queue, held, ack=False)
            if len(deliveries) != held:
                raise AssertionError(f"held {len(deliveries)} of {held} before the restart")
            held_bodies = {d.body for d in deliveries}
        stored_bodies = [f"stored-{i}".encode() for i in range(stored)]
        if stored:
            producer.publish(queue, stored_bodies, delay=stored_delay)
        if fetch_during_restart:
            loop.start()
            time.sleep(0.3)  # fetching when the server goes away
        restart()
        if ack_held:
            held_acked = consumer.ack(deliveries)
        if not fetch_during_restart:
            loop.start()
        later = [f"after-{i}".encode() for i in range(after)]
        deadline = time.monotonic() + timeout
        sent = 0
        while sent < after and time.monotonic() < deadline:
            try:  # a producer may still be reconnecting
                producer.publish(queue, later[sent:sent + 50])
                sent += 50
            except Exception as exc:  # noqa: BLE001
                publish_errors += 1
                log.warning("publish failed: %s", exc)
                time.sleep(0.2)
        expected = set(later) | set(stored_bodies) | (held_bodies if held_come_back else set())
        _wait(lambda: expected <= set(loop.seen) or not loop.alive(), timeout)
        seen = set(loop.seen)
        return RestartReport(
            before=before, held=held, stored=stored, after=after,
            lost=len(expected - seen),
            held_acked=held_acked,
            held_redelivered=sum(1 for b in loop.seen if b in held_bodies),  # drained ones are not in seen
            fetch_errors=loop.fetch_errors,
            publish_errors=publish_errors,
            loop_error=loop.error,
            size_after=consumer.size(queue),
            seconds=time.monotonic() - started,
        )
    finally:
        loop.stop(30)
        consumer.close()
        producer.close()


@dataclass(frozen=True)
class WorkerRestartReport:
    calls: int
    ran_unique: int
    lost: int
    seconds: float

    def __str__(self) -> str:
        return (f"worker restart test: {self.calls} calls, ran {self.ran_unique} unique, lost {self.lost}, "
                f"{self.seconds:.1f}s")


def run_worker_restart_scenario(url: str, restart: Callable[[], None], *, queue: str | None = None,
                                calls: int = 600, concurrency: int = 4, call_seconds: float = 0.01,
                                timeout: float = 30.0) -> WorkerRestartReport:
    """A ``@callq.task`` worker consuming while the server restarts: every call must run.

    Half the calls are pushed first and the server restarts once half of those ran (the rest
    wait in the queue, since each call takes ``call_seconds``); the other half is pushed after.
    """
    from ..task import task

    queue = queue or fresh_queue_name("cq-restart-worker")
    first = calls // 2
    started = time.monotonic()
    ran: set[int] = set()
    lock = threading.Lock()

    @task(queue, broker=url, concurrency=concurrency)
    def work(i: int) -> None:
        time.sleep(call_seconds)
        with lock:
            ran.add(i)

    try:
        work.push_many([{"i": i} for i in range(first)])
        work.consume()
        _wait(lambda: len(ran) >= first // 2, 15, 0.01)
        restart()
        work.push_many([{"i": i} for i in range(first, calls)])
        _wait(lambda: len(ran) >= calls, timeout)
        with lock:
            got = len(ran & set(range(calls)))
        return WorkerRestartReport(calls=calls, ran_unique=got, lost=calls - got,
                                   seconds=time.monotonic() - started)
    finally:
        work.stop(timeout=30)
