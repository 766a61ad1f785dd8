"""The MQTT collector's pure parts, on paho's own message objects: topic filters (checked against
paho's matcher), recognising re-sent messages, and when the inbox cuts a batch."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
import pytest

from collectors.mqtt.inbox import STALL_HINT, Inbox
from collectors.mqtt.redelivery import KEEP_BATCHES, Redelivery, fingerprint
from collectors.mqtt.session import receive_maximum, subscription_qos
from collectors.mqtt.topics import TopicFilter, validate_filter

FILTERS = ["#", "a/#", "+/b", "a/+/c", "a/b", "+", "+/#", "$SYS/#", "a/+", "sport/tennis/#",
           "/+", "+/+/+"]
TOPICS = ["a", "a/b", "a/b/c", "x/b", "b", "$SYS/x", "$SYS", "a/x/c", "sport/tennis",
          "sport/tennis/p1", "sport", "a//c", "/b", "a/b/", "/"]


def message(mid: int, topic: str, payload: bytes, qos: int = 1, dup: bool = False):
    msg = mqtt.MQTTMessage(mid=mid, topic=topic.encode())
    msg.payload, msg.qos, msg.dup = payload, qos, dup
    return msg


@pytest.mark.parametrize("topic_filter", FILTERS)
def test_exclude_filter_matches_like_paho(topic_filter):
    excluded = TopicFilter([topic_filter]).excluded
    for topic in TOPICS:
        assert excluded(topic) == mqtt.topic_matches_sub(topic_filter, topic), topic


@pytest.mark.parametrize("bad", ["a#", "a/#/b", "a+", "#/a", "sport/ten+nis", ""])
def test_invalid_filters_are_refused_with_the_filter_named(bad):
    with pytest.raises(ValueError) as err:
        validate_filter(bad)
    assert repr(bad) in str(err.value) or not bad


def test_redelivered_copy_of_committed_message_is_recognised_once_per_copy():
    seen = Redelivery()
    first = [message(7, "t", b"on"), message(8, "t", b"on")]
    seen.remember([fingerprint(m) for m in first])
    again = message(7, "t", b"on", dup=True)
    assert seen.already_committed(again)
    assert not seen.already_committed(again)                 # only one copy was committed
    assert seen.already_committed(message(8, "t", b"on", dup=True))
    assert not seen.already_committed(message(9, "t", b"on", dup=True))   # other packet id
    assert not seen.already_committed(message(7, "t", b"off", dup=True))  # other payload


def test_fingerprints_survive_a_restart_through_the_queue_meta():
    seen = Redelivery()
    for batch in range(KEEP_BATCHES + 2):
        fps = [fingerprint(message(batch * 100 + i, f"b{batch}", b"x")) for i in range(3)]
        meta = seen.meta_with(fps)
        seen.remember(fps)
    restarted = Redelivery(meta)
    newest = KEEP_BATCHES + 1
    assert restarted.already_committed(message(newest * 100, f"b{newest}", b"x", dup=True))
    oldest_kept = newest - KEEP_BATCHES + 1
    assert restarted.already_committed(message(oldest_kept * 100 + 2, f"b{oldest_kept}", b"x"))
    forgotten = oldest_kept - 1
    assert not restarted.already_committed(message(forgotten * 100, f"b{forgotten}", b"x"))


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
