"""Leases: expiry, heartbeats, stale tags, what purge and size count."""

import threading
import time

from callq.testing import drain


def test_expired_lease_is_redelivered_and_late_ack_is_harmless(open_conn) -> None:
    a, b = open_conn(), open_conn()
    a.publish("q", [b"m"])
    [first] = a.fetch("q", 1, 1.0)
    assert not first.redelivered
    assert b.fetch("q", 1, 0.3) == []  # leased to a
    time.sleep(1.1)  # a does not heartbeat: its lease ends
    [again] = b.fetch("q", 1, 2.0)
    assert again.body == b"m" and again.redelivered
    assert b.heartbeat() == 1  # b recovered one message of a dead consumer
    assert b.heartbeat() == 0
    assert a.ack([first]) == 0  # a's stale ack does not remove b's message
    assert b.fetch("q", 1, 0.2) == []
    assert b.ack([again]) == 1
    b.close()
    assert a.fetch("q", 1, 1.5) == []  # acked by b: gone for good


def test_heartbeat_keeps_the_lease_past_its_length(open_conn) -> None:
    a, b = open_conn(), open_conn()
    a.publish("q", [b"long task"])
    [held] = a.fetch("q", 1, 1.0)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(a.heartbeat_interval):
            a.heartbeat()

    beater = threading.Thread(target=beat)
    beater.start()
    try:
        started = time.monotonic()
        stolen = []
        while time.monotonic() - started < 3.0:  # three lease lengths
            stolen += b.fetch("q", 1, 0.2)
        assert stolen == []
        assert b.size("q") == 0
    finally:
        stop.set()
        beater.join()
    assert a.ack([held]) == 1
    time.sleep(1.1)
    assert b.fetch("q", 1, 0.2) == []


def test_lease_lost_to_another_consumer_is_not_released_on_close(open_conn) -> None:
    a, b = open_conn(), open_conn()
    a.publish("q", [b"m"])
    a.fetch("q", 1, 1.0)
    time.sleep(1.1)
    [taken] = b.fetch("q", 1, 1.0)
    a.heartbeat()  # finds the lease gone
    a.close()  # must not put b's message back
    assert b.size("q") == 0
    assert open_conn().fetch("q", 1, 0.2) == []
    assert b.ack([taken]) == 1


def test_stale_tag_cannot_hit_a_reused_row_id(open_conn) -> None:
    # sqlite reuses the largest row id once that row is deleted; tags carry the claim too.
    a, b = open_conn(), open_conn()
    a.publish("q", [b"old"])
    [stale] = a.fetch("q", 1, 1.0)
    time.sleep(1.1)
    [old] = b.fetch("q", 1, 1.0)
    b.ack([old])
    a.publish("q", [b"new"])
    [new] = a.fetch("q", 1, 1.0)
    assert new.body == b"new" and new.tag[0] == stale.tag[0]  # same row id
    assert a.ack([stale]) == 0
    assert a.requeue([new]) == 1
    assert [d.body for d in drain(b, "q", 1)] == [b"new"]


def test_requeue_marks_redelivered_and_keeps_priority_order(open_conn) -> None:
    a = open_conn()
    a.publish("q", [b"low"], priority=1)
    a.publish("q", [b"high"], priority=5)
    got = a.fetch("q", 2, 1.0)
    assert [d.body for d in got] == [b"high", b"low"]
    a.requeue(got)
    again = a.fetch("q", 2, 1.0)
    assert [d.body for d in again] == [b"high", b"low"]
    assert all(d.redelivered for d in again)
    a.ack(again)


def test_size_and_purge_leave_live_leases_alone(open_conn) -> None:
    a, b = open_conn(), open_conn()
    a.publish("q", [b"ready"] * 3)
    a.publish("q", [b"delayed"], delay=60)
    held = b.fetch("q", 2, 1.0)
    assert len(held) == 2
    assert a.size("q") == 2  # one ready + one delayed; the two leased ones excluded
    assert a.purge("q") == 2
    assert a.size("q") == 0
    assert b.ack(held) == 2  # in-flight messages survived the purge


def test_expired_lease_counts_as_waiting(open_conn) -> None:
    a, b = open_conn(), open_conn()
    a.publish("q", [b"m"])
    a.fetch("q", 1, 1.0)
    assert b.size("q") == 0
    time.sleep(1.1)
    assert b.size("q") == 1
    assert b.purge("q") == 1


def test_close_puts_unacked_back_at_once(open_conn) -> None:
    a, b = open_conn(), open_conn()
    a.publish("q", [b"u1", b"u2", b"u3"])
    got = a.fetch("q", 3, 1.0)
    a.ack(got[:1])
    a.close()
    started = time.monotonic()
    back = b.fetch("q", 10, 1.0)
    assert sorted(d.body for d in back) == [b"u2", b"u3"]
    assert time.monotonic() - started < 0.5  # not after the lease: released on close
    assert all(d.redelivered for d in back)
    b.ack(back)


def test_fetch_wakes_for_a_delayed_message_when_due(open_conn) -> None:
    a = open_conn()
    a.publish("q", [b"soon"], delay=0.4)
    started = time.monotonic()
    got = a.fetch("q", 1, 3.0)
    waited = time.monotonic() - started
    assert [d.body for d in got] == [b"soon"]
    assert 0.35 <= waited < 1.0
    a.ack(got)


def test_operations_after_close_fail_clearly(open_conn) -> None:
    import pytest

    from callq.errors import BrokerError

    a = open_conn()
    broker = a.broker
    a.close()
    with pytest.raises(BrokerError, match="closed"):
        broker.callq_publish("q", [b"x"], 0.0, None)


def test_large_batches_beyond_the_sql_variable_limit(open_conn) -> None:
    a = open_conn()
    bodies = [f"b{i}".encode() for i in range(2500)]
    assert a.publish("big", bodies) == 2500
    got = a.fetch("big", 2500, 1.0)
    assert len(got) == 2500
    assert a.heartbeat() == 0
    assert a.requeue(got[:1200]) == 1200
    assert a.ack(got[1200:]) == 1300
    again = a.fetch("big", 5000, 1.0)
    assert sorted(d.body for d in again) == sorted(bodies[:1200])
    assert a.ack(again) == 1200
    assert a.size("big") == 0


def test_ready_messages_are_found_past_a_large_delayed_backlog(open_conn) -> None:
    # Fetch seeks each priority's ready rows; it must not depend on scanning delayed ones.
    a = open_conn()
    a.publish("mixed", [b"later"] * 20000, delay=3600, priority=5)
    a.publish("mixed", [b"later"] * 20000, delay=3600)
    a.publish("mixed", [b"now-low"], priority=-1)
    a.publish("mixed", [b"now"])
    got = a.fetch("mixed", 10, 1.0)
    assert [d.body for d in got] == [b"now", b"now-low"]
    a.ack(got)
    assert a.size("mixed") == 40000
    assert a.fetch("mixed", 10, 0.2) == []
    assert a.purge("mixed") == 40000
