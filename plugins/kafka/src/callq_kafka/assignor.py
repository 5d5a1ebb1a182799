"""A partition assignor that leaves a partition with the live member still working on it.

Kafka moves partitions whenever a member joins or leaves. With the stock assignors a
partition whose messages are still running on member A may go to member B, which then
fetches them again from the committed offset: a duplicate while A is alive and well.

Here each member says, in its JoinGroup user data, which partitions hold its unsettled
deliveries ("busy"); the group leader gives every member an even share and fills each
share with the member's own busy partitions first. So the group membership is the lease:
a live member (whose heartbeats keep it in the group) keeps its in-flight messages as long
as they fit its share; a dead one is dropped after ``session_timeout`` and its partitions,
read again from the committed watermark, go to the others.
Every member of a group must use this assignor (callq's consumers all do).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

from kafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from kafka.protocol.consumer.metadata import (
    ConsumerProtocolAssignment,
    ConsumerProtocolSubscription,
)

log = logging.getLogger("callq.kafka")

NAME = "callq-inflight"


def assign_partitions(partitions: Iterable[int], members: dict[str, set[int]]) -> dict[str, list[int]]:
    """Balanced shares; within its share a member keeps its busy partitions (pure; id -> busy).

    Every member gets ``n // m`` or ``n // m + 1`` partitions, the larger shares going to the
    members with the most busy partitions. A member keeps as many of its busy partitions as its
    share holds; busy partitions beyond it move (their unsettled messages are fetched again by
    the new owner), so a new consumer always gets its share, even from a busy group.
    """
    parts = sorted(set(partitions))
    claims = {m: {p for p in busy if p in parts} for m, busy in members.items()}
    order = sorted(claims, key=lambda m: (-len(claims[m]), m))
    out: dict[str, list[int]] = {m: [] for m in order}
    if not order:
        return out
    base, extra = divmod(len(parts), len(order))
    share = {m: base + (1 if i < extra else 0) for i, m in enumerate(order)}
    owner: dict[int, str] = {}
    for m in order:  # a partition claimed twice (after a kick-out) goes to the first
        for p in sorted(claims[m]):
            if len(out[m]) < share[m] and p not in owner:
                owner[p] = m
                out[m].append(p)
    for p in parts:
        if p not in owner:
            m = next(k for k in order if len(out[k]) < share[k])
            owner[p] = m
            out[m].append(p)
    return {m: sorted(ps) for m, ps in sorted(out.items())}


class InflightAssignor(AbstractPartitionAssignor):
    """One instance per consumer: ``busy()`` returns the partitions with unsettled deliveries."""

    name = NAME
    version = 0

    def __init__(self, busy: Callable[[], set[int]]) -> None:
        self._busy = busy

    def metadata(self, topics: Any) -> ConsumerProtocolSubscription:
        busy = sorted(self._busy())
        return ConsumerProtocolSubscription(self.version, sorted(topics), json.dumps({"busy": busy}).encode())

    def assign(self, cluster: Any, members: Any) -> dict[str, ConsumerProtocolAssignment]:
        by_topic: dict[str, dict[str, set[int]]] = {}
        for member in members:
            meta = member.metadata
            try:
                busy = set(json.loads(meta.user_data or b"{}").get("busy", []))
            except (ValueError, AttributeError):
                busy = set()
            for topic in meta.topics:
                by_topic.setdefault(topic, {})[member.member_id] = busy
        result: dict[str, list[tuple[str, list[int]]]] = {m.member_id: [] for m in members}
        for topic, claims in by_topic.items():
            partitions = cluster.partitions_for_topic(topic)
            if partitions is None:
                log.warning("no partition metadata for topic %s", topic)
                continue
            for member_id, parts in assign_partitions(partitions, claims).items():
                if parts:
                    result[member_id].append((topic, parts))
        return {m: ConsumerProtocolAssignment(self.version, sorted(a), b"") for m, a in result.items()}

    def on_assignment(self, assignment: Any, generation: Any = None) -> None:
        pass
