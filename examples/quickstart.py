"""callq quick start: a plain function, one decorator, a few hundred calls through a queue.

Runs on the embedded default broker (a sqlite file in your user data directory) unless
CALLQ_BROKER_URL names another, e.g. CALLQ_BROKER_URL=redis://127.0.0.1:6379/0.
"""

from __future__ import annotations

import logging
import random
import time

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import callq

CALLS = 300
QPS = 40


@callq.task("quickstart", qps=QPS, concurrency=32, max_retries=2, retry_backoff=0.2, stop_when_idle=2.0)
def fetch_price(item: int, currency: str = "EUR") -> float:
    """Pretend to call a slow, flaky remote service."""
    time.sleep(random.uniform(0.05, 0.5))
    if random.random() < 0.15:
        raise ConnectionError(f"service unavailable for item {item}")
    return round(item * 1.07, 2)


def main() -> None:
    console = Console()
    logging.basicConfig(level=logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])
    logging.getLogger("callq.worker").setLevel(logging.ERROR)  # retries are expected here

    fetch_price.clear()
    console.print(f"[bold]callq quick start[/] broker: {fetch_price.connection.url}")
    fetch_price.push_many((i,) for i in range(CALLS))
    console.print(f"published {CALLS} calls; consuming at {QPS} calls/s ...")

    started = time.monotonic()
    consumer = fetch_price.consume()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("calls finished", total=CALLS)
        while consumer.running:
            stats = consumer.stats()
            progress.update(bar, completed=stats.done + stats.dead,
                            description=f"done {stats.done}, retried {stats.retried}, dead {stats.dead}, "
                                        f"threads {stats.threads}")
            time.sleep(0.1)
        stats = consumer.stats()
        progress.update(bar, completed=stats.done + stats.dead)
    elapsed = time.monotonic() - started

    table = Table(title="summary")
    for column in ("done", "retried", "dead-lettered", "elapsed", "calls started/s"):
        table.add_column(column, justify="right")
    busy = max(elapsed - 2.0, 1e-9)  # minus the idle wait before stopping
    table.add_row(str(stats.done), str(stats.retried), str(stats.dead), f"{elapsed:.1f}s",
                  f"{(stats.done + stats.failed) / busy:.1f} (limit {QPS})")
    console.print(table)
    if stats.dead:
        console.print(f"dead-lettered calls wait in queue {fetch_price.options.dlq!r} with their errors")
    assert stats.done + stats.dead == CALLS, "a call went missing"


if __name__ == "__main__":
    main()
