"""Size and purge of a queue: offsets of its consumer group, read from outside the group."""

from __future__ import annotations

import threading
import time
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata

from callq.errors import BrokerError
from callq.url import BrokerURL

from .consumer import QueueConsumer


class QueueAdmin:
    """Mixin of :class:`~callq_kafka.broker.KafkaBroker`: ``callq_size`` and ``callq_purge``."""

    url: BrokerURL
    group_prefix: str
    connect_timeout: float
    session_timeout: float
    _lock: threading.Lock
    _consumers: dict[str, QueueConsumer]
    _tools: dict[str, KafkaConsumer]

    def _consumer_config(self) -> dict[str, Any]:
        raise NotImplementedError

    def _ensure_topic(self, queue: str) -> str:
        raise NotImplementedError

    def _tool(self, queue: str) -> KafkaConsumer:
        """A consumer outside the group (no subscription) for offsets of the queue's group."""
        tool = self._tools.get(queue)
        if tool is None:
            tool = KafkaConsumer(group_id=self.group_prefix + queue, enable_auto_commit=False,
                                 auto_offset_reset="earliest", **self._consumer_config())
            self._tools[queue] = tool
        return tool

    def _partitions(self, queue: str, tool: KafkaConsumer, topic: str) -> list[TopicPartition]:
        """The topic's partitions; none if it does not exist (yet) after a short wait.

        kafka-python waits for metadata without a timeout: the wait runs on a helper thread,
        and a server that does not answer within ``connect_timeout`` is a BrokerError.
        """
        found: list[set[int] | None] = []
        deadline = time.monotonic() + 2.0
        while True:
            worker = threading.Thread(target=lambda: found.append(tool.partitions_for_topic(topic)), daemon=True)
            worker.start()
            worker.join(self.connect_timeout)
            if worker.is_alive():
                self._tools.pop(queue, None)  # left to its thread; a fresh one next time
                raise BrokerError(f"Kafka at {self.url} sent no metadata for {topic} within "
                                  f"{self.connect_timeout:.0f}s")
            parts = found.pop()
            if parts or time.monotonic() > deadline:
                return [TopicPartition(topic, p) for p in sorted(parts or ())]
            time.sleep(0.1)

    def callq_size(self, queue: str) -> int:
        """Waiting messages: the group's lag (end offset - committed), less what this connection holds."""
        topic = self._ensure_topic(queue)
        consumer = self._consumers.get(queue)
        if consumer is not None:
            consumer.heartbeat()  # commits what is settled
        with self._lock:
            try:
                tool = self._tool(queue)
                tps = self._partitions(queue, tool, topic)
                ends = tool.end_offsets(tps)
                lag = sum(max(0, ends[tp] - (tool.committed(tp) or 0)) for tp in tps)
            except KafkaError as exc:
                raise BrokerError(f"size of {queue} on {self.url} failed: {exc}") from exc
        held = consumer.unsettled() if consumer is not None else 0
        return max(0, lag - held)

    def callq_purge(self, queue: str) -> int:
        """Skip every waiting message: read through to the end and commit there (for the group).

        Partitions this connection consumes are skipped by its own group member; the others by
        a commit from outside the group, which Kafka accepts only while the group has no
        members; failing that, by a short-lived member of the group (which gets the partitions
        of dead members, but not those of live consumers in other processes: BrokerError).
        """
        topic = self._ensure_topic(queue)
        consumer = self._consumers.get(queue)
        skipped = 0
        mine: set[TopicPartition] = set()
        if consumer is not None:
            skipped, mine = consumer.skip_to_end()
        with self._lock:
            try:
                tool = self._tool(queue)
                others = [tp for tp in self._partitions(queue, tool, topic) if tp not in mine]
                if not others:
                    return skipped
                tool.assign(others)
                got = 0
                while True:
                    batch = tool.poll(timeout_ms=300, max_records=1000)
                    if not batch:
                        break
                    got += sum(len(r) for r in batch.values())
                offsets = {tp: OffsetAndMetadata(tool.position(tp), "", -1) for tp in others}
                tool.unsubscribe()
                tool.commit(offsets)
                return skipped + got
            except CommitFailedError:
                pass  # the group has members (maybe dead ones not yet expired): join it below
            except KafkaError as exc:
                raise BrokerError(f"purge of {queue} on {self.url} failed: {type(exc).__name__}: {exc}") from exc
        if consumer is not None:
            raise BrokerError(f"purge of {queue} on {self.url}: partitions {sorted(tp.partition for tp in others)} "
                              "belong to consumers in other processes; Kafka lets only a partition's owner "
                              "commit it. Purge while no other worker consumes the queue")
        temp = QueueConsumer(queue, topic, self.group_prefix + queue, self._consumer_config())
        try:
            got, theirs = temp.skip_to_end(join_timeout=self.session_timeout + 10.0)
        finally:
            temp.close()
        missing = sorted(tp.partition for tp in others if tp not in theirs)
        if missing:
            raise BrokerError(f"purge of {queue} on {self.url}: partitions {missing} belong to consumers in "
                              "other processes; Kafka lets only a partition's owner commit it. Purge while "
                              "no other worker consumes the queue")
        return skipped + got
