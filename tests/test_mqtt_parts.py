"""The MQTT collector's pure parts, on paho's own message objects: recognising re-sent messages,
and when the inbox cuts a batch (topic filters: test_topicfilter.py)."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
import pytest

from collectors.mqtt.inbox import STALL_HINT, Inbox
from collectors.mqtt.redelivery import KEEP_BATCHES, TRUST_AFTER, Redelivery, fingerprint
from collectors.mqtt.session import receive_maximum, subscription_qos

def message(mid: int, topic: str, payload: bytes, qos: int = 1, dup: bool = False):
    msg = mqtt.MQTTMessage(mid=mid, topic=topic.encode())
    msg.payload, msg.qos, msg.dup = payload, qos, dup
    return msg


def test_redelivered_copy_of_a_never_acknowledged_message_is_recognised_once_per_copy():
    seen = Redelivery()
    seen.never_acknowledged([fingerprint(m) for m in
                             (message(7, "t", b"on"), message(8, "t", b"on"))])
    again = message(7, "t", b"on", dup=True)
    assert seen.already_committed(again)
    assert not seen.already_committed(again)                 # only one copy was committed
    assert seen.already_committed(message(8, "t", b"on", dup=True))
    assert not seen.already_committed(message(9, "t", b"on", dup=True))   # other packet id
    assert not seen.already_committed(message(7, "t", b"off", dup=True))  # other payload


def _commit_batches(seen: Redelivery, count: int, size: int = 10, start_mid: int = 1) -> str:
    """Feed ``count`` batches of first-copy messages with increasing packet ids (Mosquitto)."""
    meta = ""
    mid = start_mid
    for _ in range(count):
        batch = [message(mid + i, "t", f"v{mid + i}".encode()) for i in range(size)]
        for msg in batch:
            seen.first_copy(msg)
        fps = [fingerprint(m) for m in batch]
        meta = seen.meta_with(fps)
        seen.committed(fps)
        mid += size
    return meta


def test_recent_batches_are_trusted_only_after_the_broker_showed_increasing_packet_ids():
    seen = Redelivery()
    _commit_batches(seen, TRUST_AFTER - 1)
    last = message(10 * (TRUST_AFTER - 1), "t", f"v{10 * (TRUST_AFTER - 1)}".encode(), dup=True)
    assert not seen.trusted and not seen.already_committed(last)
    _commit_batches(seen, 1, start_mid=10 * (TRUST_AFTER - 1) + 1)
    assert seen.trusted and seen.already_committed(last)


def test_trusted_fingerprints_survive_a_restart_through_the_queue_meta():
    seen = Redelivery()
    meta = _commit_batches(seen, TRUST_AFTER + 2)
    restarted = Redelivery(meta)
    newest = 10 * (TRUST_AFTER + 2)
    assert restarted.trusted
    assert restarted.already_committed(message(newest, "t", f"v{newest}".encode(), dup=True))
    forgotten = 10 * (TRUST_AFTER + 2 - KEEP_BATCHES)      # evicted from the window
    assert not restarted.already_committed(message(forgotten, "t", f"v{forgotten}".encode(),
                                                   dup=True))


def test_a_broker_that_reuses_packet_ids_at_once_is_never_trusted():
    """Lowest-free-id brokers: a new, identical message may carry a just-acknowledged id.
    Skipping its re-sent copy would lose it, so the recent window is switched off for good."""
    seen = Redelivery()
    for _ in range(TRUST_AFTER + 2):
        _commit_batches(seen, 1, start_mid=1)           # every batch re-uses ids 1..10
    assert seen.reuse_seen and not seen.trusted
    assert seen.meta_with([fingerprint(message(1, "t", b"v1"))]) == ""
    assert not seen.already_committed(message(1, "t", b"v1", dup=True))
    assert Redelivery("").trusted is False


def test_a_lost_session_forgets_everything():
    seen = Redelivery()
    seen.never_acknowledged([fingerprint(message(1, "t", b"x"))])
    seen.forget()
    assert not seen.already_committed(message(1, "t", b"x", dup=True))


def _inbox(**kwargs) -> Inbox:
    args = dict(batch_events=100, batch_interval=0.05, batch_bytes=10**6, max_held=1000,
                max_held_bytes=10**7, commit_on_stall=True)
    args.update(kwargs)
    return Inbox(**args)


def _items(n: int, start: int = 0, qos: int = 1, size: int = 10):
    return [(time.time_ns(), message(start + i + 1, "t", b"p" * size, qos)) for i in range(n)]


def test_inbox_cuts_at_batch_events_and_keeps_the_rest():
    inbox = _inbox()
    inbox.put(_items(250), drained=False)
    batch, generation = inbox.take()
    assert len(batch) == 100 and generation == 0
    assert len(inbox.take()[0]) == 100
    assert inbox.held == 250          # released only when the committer is done


def test_inbox_waits_batch_interval_for_a_small_batch():
    inbox = _inbox(batch_interval=0.2)
    inbox.put(_items(5), drained=False)
    began = time.monotonic()
    batch, _ = inbox.take()
    assert len(batch) == 5 and 0.15 <= time.monotonic() - began < 1.0


def test_inbox_commits_at_once_when_the_broker_waits_for_acks():
    inbox = _inbox(batch_interval=5.0)
    inbox.put(_items(STALL_HINT), drained=True)   # socket empty, a broker window's worth held
    began = time.monotonic()
    assert len(inbox.take()[0]) == STALL_HINT and time.monotonic() - began < 0.5


def test_inbox_drops_unacknowledged_messages_of_a_lost_connection_but_keeps_qos0():
    inbox = _inbox(batch_interval=5.0)
    inbox.put(_items(10, qos=1) + _items(4, start=50, qos=0), drained=False)
    assert inbox.discard_unacked() == 10
    assert inbox.held == 4 and inbox.generation == 1
    inbox.close()
    batch, generation = inbox.take()
    assert [msg.qos for _rx, msg in batch] == [0] * 4 and generation == 1
    inbox.release(4, 40)
    assert inbox.take() is None


def test_inbox_bounds_what_is_held_by_count_and_bytes():
    inbox = _inbox(max_held=50, max_held_bytes=1000)
    inbox.put(_items(49), drained=False)
    assert inbox.room()
    inbox.put(_items(1, start=49), drained=False)
    assert not inbox.room()
    big = _inbox(max_held_bytes=1000)
    big.put(_items(1, size=1000), drained=False)
    assert not big.room()


def test_inbox_close_wakes_a_waiting_committer():
    inbox = _inbox()
    result = []
    thread = threading.Thread(target=lambda: result.append(inbox.take()))
    thread.start()
    time.sleep(0.1)
    inbox.close()
    thread.join(2)
    assert result == [None]


def test_qos2_is_subscribed_as_qos1_and_receive_maximum_is_bounded():
    assert [subscription_qos(q) for q in (0, 1, 2)] == [0, 1, 1]
    assert receive_maximum(1000) == 2000
    assert receive_maximum(1) == 20 and receive_maximum(100_000) == 65535
