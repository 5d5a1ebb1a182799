"""One queue's consumer: a kafka-python ``KafkaConsumer`` in the queue's consumer group.

kafka-python's consumer is not meant for concurrent use: every call into it (poll, commit,
pause, seek, close) happens under ``self._lock``. Acks touch only the offset bookkeeping
(:class:`~callq_kafka.offsets.PartitionLog`, under ``self._track``), so they never wait for
a poll; the commit points they move are committed by the next fetch, heartbeat or close.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from callq.broker import Delivery

from .assignor import InflightAssignor
from .offsets import PartitionLog

log = logging.getLogger("callq.kafka")

#: most seconds between two commits while fetching (a settled message is committed by then)
COMMIT_EVERY = 0.5
#: most seconds a heartbeat spends completing a rebalance this member takes part in
JOIN_WAIT = 5.0


class _Listener(AsyncConsumerRebalanceListener):
    """Rebalance hooks (run on kafka-python's I/O loop: they must not call the consumer's sync API)."""

    def __init__(self, owner: QueueConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        # commit what is settled while we still are the recognised owner
        offsets = self.owner.commit_offsets({tp.partition for tp in revoked})
        coordinator = getattr(self.owner.consumer, "_coordinator", None)
        commit = getattr(coordinator, "_commit_offsets_sync_async", None)
        if offsets and commit is not None:
            try:
                await commit(offsets)
                self.owner.committed(offsets)
            except Exception as exc:  # noqa: BLE001 - the next owner redelivers from the last commit
                log.info("commit before rebalance of %s failed: %s", self.owner.topic, exc)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.owner.assigned({tp.partition for tp in assigned})

    async def on_partitions_lost(self, lost: Any) -> None:
        self.owner.lost({tp.partition for tp in lost})


class QueueConsumer:
    """The consumer of one queue (topic) for one broker instance."""

    def __init__(self, queue: str, topic: str, group: str, config: dict[str, Any]) -> None:
        self.queue = queue
        self.topic = topic
        self._lock = threading.Lock()  # the KafkaConsumer
        self._track = threading.Lock()  # self._logs
        self._logs: dict[int, PartitionLog] = {}
        self._seek: dict[int, int] = {}  # partitions kept over a rebalance -> where to go on
        self._last_commit = 0.0
        self._last_poll = time.monotonic()
        self._closed = False
        self.consumer = KafkaConsumer(
            group_id=group, enable_auto_commit=False, auto_offset_reset="earliest",
            partition_assignment_strategy=[InflightAssignor(self.busy)], **config)
        self.consumer.subscribe([topic], listener=_Listener(self))

    # --- bookkeeping (any thread) -------------------------------------------------------------

    def busy(self) -> set[int]:
        with self._track:
            return {p for p, plog in self._logs.items() if plog.busy}

    def commit_offsets(self, partitions: set[int] | None = None) -> dict[TopicPartition, OffsetAndMetadata]:
        with self._track:
            return {TopicPartition(self.topic, p): OffsetAndMetadata(plog.mark, "", -1)
                    for p, plog in self._logs.items()
                    if plog.due() and (partitions is None or p in partitions)}

    def committed(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        with self._track:
            for tp, meta in offsets.items():
                plog = self._logs.get(tp.partition)
                if plog is not None:
                    plog.committed = meta.offset

    def assigned(self, partitions: set[int]) -> None:
        with self._track:
            for p in list(self._logs):
                if p not in partitions:
                    del self._logs[p]  # moved to another member, which reads it again
            for p in partitions:
                plog = self._logs.get(p)
                nxt = plog.next_fetch if plog is not None else None
                if nxt is not None:
                    self._seek[p] = nxt  # kept: go on after what we delivered, not from the commit

    def lost(self, partitions: set[int]) -> None:
        with self._track:
            for p in partitions:
                self._logs.pop(p, None)

    def settle(self, deliveries: Sequence[Delivery]) -> int:
        n = 0
        with self._track:
            for d in deliveries:
                partition, offset = d.tag
                plog = self._logs.get(partition)
                if plog is not None and plog.settle(offset):
                    n += 1
        return n

    def unsettled(self) -> int:
        with self._track:
            return sum(plog.unsettled for plog in self._logs.values())

    # --- calls into kafka-python (under self._lock) ------------------------------------------

    def _apply_seeks(self) -> None:
        with self._track:
            seeks, self._seek = self._seek, {}
        assignment = self.consumer.assignment()
        for p, offset in seeks.items():
            tp = TopicPartition(self.topic, p)
            if tp in assignment:
                self.consumer.seek(tp, offset)

    def _commit(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_commit < COMMIT_EVERY:
            return
        offsets = self.commit_offsets()
        self._last_commit = now
        if not offsets:
            return
        try:
            self.consumer.commit(offsets)
        except KafkaError as exc:  # a rebalance under way: the next owner redelivers (at-least-once)
            log.info("commit of %s failed: %s", self.topic, exc)
            return
        self.committed(offsets)

    def fetch(self, max_n: int, timeout: float) -> list[Delivery]:
        with self._lock:
            if self._closed:
                return []
            self._commit()
            self._apply_seeks()
            batches = self.consumer.poll(timeout_ms=int(timeout * 1000), max_records=max_n)
            self._last_poll = time.monotonic()
            self._apply_seeks()
            out: list[Delivery] = []
            if not batches:
                return out
            assignment = self.consumer.assignment()
            with self._track:
                for tp, records in batches.items():
                    if tp not in assignment:
                        continue  # revoked during the poll: its new owner reads it
                    plog = self._logs.get(tp.partition)
                    if plog is None:
                        plog = self._logs[tp.partition] = PartitionLog()
                    for rec in records:
                        # a partition kept over a rebalance restarts at its commit until our seek
                        # lands: what we delivered already is not delivered twice
                        if plog.delivered(rec.offset):
                            out.append(Delivery(rec.value, self.queue, (tp.partition, rec.offset)))
            return out

    def heartbeat(self) -> None:
        """Commit what is settled; keep taking part in rebalances while the runner fetches nothing."""
        if not self._lock.acquire(timeout=0.05):
            return  # a fetch is polling right now: it does both
        try:
            if self._closed:
                return
            self._commit(force=True)
            if time.monotonic() - self._last_poll > 0.5:
                assignment = self.consumer.assignment()
                if assignment:
                    self.consumer.pause(*assignment)
                try:
                    self._poll_paused()
                finally:
                    assignment = self.consumer.assignment()
                    if assignment:
                        self.consumer.resume(*assignment)
                    self._apply_seeks()
                self._last_poll = time.monotonic()
        finally:
            self._lock.release()

    def _poll_paused(self) -> None:
        """Poll without taking records: sends heartbeats' rejoin through (a join needs several polls).

        A partition assigned meanwhile is not paused: what it gave is put back by a seek.
        """
        coordinator = getattr(self.consumer, "_coordinator", None)
        deadline = time.monotonic() + JOIN_WAIT
        while True:
            for tp, records in self.consumer.poll(timeout_ms=100, max_records=1).items():
                if records:
                    self.consumer.seek(tp, records[0].offset)
            if coordinator is None or not coordinator.need_rejoin() or time.monotonic() > deadline:
                return

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._commit(force=True)
            finally:
                try:
                    self.consumer.close(autocommit=False)  # leaves the group: others get our partitions now
                except Exception as exc:  # noqa: BLE001 - closing must not raise
                    log.warning("closing the consumer of %s: %s", self.topic, exc)

    def skip_to_end(self, join_timeout: float = 0.0) -> tuple[int, set[TopicPartition]]:
        """Purge: read through our partitions, mark all of it settled, commit. (count, partitions).

        ``join_timeout``: how long a consumer that has no partitions yet waits for its share.
        """
        with self._lock:
            if self._closed:
                return 0, set()
            deadline = time.monotonic() + join_timeout
            skipped = 0
            while True:
                batches = self.consumer.poll(timeout_ms=300, max_records=1000)
                with self._track:
                    for tp, records in batches.items():
                        plog = self._logs.get(tp.partition)
                        if plog is None:
                            plog = self._logs[tp.partition] = PartitionLog()
                        for rec in records:
                            plog.delivered(rec.offset)
                            plog.settle(rec.offset)
                        skipped += len(records)
                if not batches and (self.consumer.assignment() or time.monotonic() > deadline):
                    break
            self._commit(force=True)
            return skipped, set(self.consumer.assignment())
