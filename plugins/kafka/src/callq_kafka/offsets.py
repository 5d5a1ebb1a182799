"""Per-partition commit points: the highest offset below which every delivered message is settled.

Calls finish out of order, but Kafka keeps one committed offset per partition. A
:class:`PartitionLog` records each delivered offset and whether its call settled (acked,
or requeued/retried by republishing); the commit point only moves past settled offsets,
so a crash redelivers every unsettled message (and maybe some settled ones: at-least-once).
"""

from __future__ import annotations

from collections import OrderedDict


class PartitionLog:
    """Delivered offsets of one partition, in delivery (= offset) order."""

    __slots__ = ("_pending", "_mark", "committed")

    def __init__(self) -> None:
        self._pending: OrderedDict[int, bool] = OrderedDict()  # offset -> settled
        self._mark: int | None = None  # every offset below is settled; None before any delivery
        self.committed: int | None = None  # the last commit point sent to Kafka

    def delivered(self, offset: int) -> bool:
        """Record a delivery; False if ``offset`` is already ours (in flight or settled)."""
        if offset in self._pending or (self._mark is not None and offset < self._mark):
            return False
        self._pending[offset] = False
        if self._mark is None:
            self._mark = offset
        return True

    def settle(self, offset: int) -> bool:
        """Mark ``offset`` settled; False if it is not one of ours (an old or unknown delivery)."""
        if offset not in self._pending:
            return False
        self._pending[offset] = True
        pending = self._pending
        while pending:
            first = next(iter(pending))
            if not pending[first]:
                self._mark = first
                return True
            pending.popitem(last=False)
            self._mark = first + 1
        return True

    @property
    def mark(self) -> int | None:
        """The offset to commit: the lowest unsettled delivered offset, else one past the last."""
        return self._mark

    @property
    def busy(self) -> bool:
        """Whether some delivered message of this partition is not settled yet."""
        return any(not done for done in self._pending.values())

    @property
    def next_fetch(self) -> int | None:
        """Where to continue fetching to skip what this consumer already delivered."""
        if self._pending:
            return next(reversed(self._pending)) + 1
        return self._mark

    @property
    def unsettled(self) -> int:
        return sum(1 for done in self._pending.values() if not done)

    def due(self) -> bool:
        return self._mark is not None and self._mark != self.committed
