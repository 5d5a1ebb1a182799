"""What ``callq status`` and the dashboard show about queues: size, rates, consumers, paused."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .broker import Connection
from .registry import known_queues, live_consumers

#: seconds of call history behind the done and failed rates
RATE_WINDOW = 10.0


@dataclass
class QueueStatus:
    queue: str
    size: int | None
    dlq: str
    dlq_size: int | None
    consumers: int
    running: int
    done_rate: float
    failed_rate: float
    publish_rate: float | None
    paused: bool
    error: str | None = None
    workers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def drain_seconds(self) -> float | None:
        """Estimated time to empty the queue at the current net rate (None: not draining)."""
        if not self.size:
            return 0.0 if self.size == 0 else None
        net = self.done_rate + self.failed_rate - (self.publish_rate or 0.0)
        return self.size / net if net > 0 else None


def _paused_queues(conn: Connection) -> set[str]:
    prefix = "callq:pause:"
    return {k[len(prefix):] for k in conn.state.scan(prefix)}


def collect(conn: Connection, queues: list[str] | None = None, *, history: Any = None,
            previous: dict[str, tuple[float, int]] | None = None) -> list[QueueStatus]:
    """Status of ``queues`` (default: every queue a consumer started on, or that is paused).

    Rates come from the consumers' heartbeats (or the history, if given, when no consumer is
    live); the publish rate needs ``previous`` sizes ``{queue: (monotonic time, size)}``,
    which this updates.
    """
    shared = conn.capabilities.shared_state
    registry = known_queues(conn.state) if shared else {}
    paused = _paused_queues(conn) if shared else set()
    live = live_consumers(conn.state) if shared else []
    names = list(queues) if queues else sorted(set(registry) | paused | {c["queue"] for c in live})
    hist_rates = history.queue_stats(RATE_WINDOW) if history is not None else {}
    out = []
    for q in names:
        dlq = (registry.get(q) or {}).get("dlq") or f"{q}.dlq"
        workers = [c for c in live if c.get("queue") == q]
        error = None
        try:
            size: int | None = conn.size(q)
            dlq_size: int | None = conn.size(dlq)
        except Exception as exc:  # noqa: BLE001 - show the queue with its error
            size = dlq_size = None
            error = f"{type(exc).__name__}: {exc}"
        done_rate = sum(float(c.get("rate") or 0) for c in workers)
        failed_rate = sum(float(c.get("fail_rate") or 0) for c in workers)
        if q in hist_rates:  # the history is more current than heartbeat samples
            done_rate = hist_rates[q]["finished"] - hist_rates[q]["failed"]
            failed_rate = hist_rates[q]["failed"]
        publish_rate = None
        now = time.monotonic()
        if previous is not None and size is not None:
            before = previous.get(q)
            if before is not None and now - before[0] > 0.2:
                publish_rate = max(0.0, done_rate + failed_rate + (size - before[1]) / (now - before[0]))
            if before is None or now - before[0] > 0.2:
                previous[q] = (now, size)
        out.append(QueueStatus(q, size, dlq, dlq_size, len(workers), sum(int(c.get("running") or 0) for c in workers),
                               done_rate, failed_rate, publish_rate, q in paused, error, workers))
    return out


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def table(rows: list[QueueStatus]) -> str:
    head = ("QUEUE", "SIZE", "DLQ", "IN/S", "DONE/S", "FAILED/S", "CONSUMERS", "RUNNING", "DRAIN", "PAUSED")
    lines = [head]
    for r in rows:
        lines.append((r.queue, "?" if r.size is None else str(r.size), "?" if r.dlq_size is None else str(r.dlq_size),
                      "-" if r.publish_rate is None else f"{r.publish_rate:.1f}", f"{r.done_rate:.1f}",
                      f"{r.failed_rate:.1f}", str(r.consumers), str(r.running), fmt_seconds(r.drain_seconds),
                      "yes" if r.paused else "no"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)
    errors = [f"{r.queue}: {r.error}" for r in rows if r.error]
    return text + ("\n" + "\n".join(errors) if errors else "")
