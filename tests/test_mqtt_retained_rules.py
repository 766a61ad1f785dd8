"""The rules behind "a retained message is one point", as pure functions: which deliveries are
stored (collectors/mqtt/retained.py) and what is subscribed on each connect
(collectors/mqtt/subscriptions.py). The same rules run against the real broker and InfluxDB in
tests/test_mqtt_retained.py."""

from __future__ import annotations

import threading

from collectors.mqtt.retained import META_PREFIX, RetainedTopics
from collectors.mqtt.subscriptions import Plan, Record, Subscriptions


def commit(topics: RetainedTopics, deliveries) -> tuple[list[bool], dict]:
    """One batch of (topic, payload, retain): which were recognised as sent again, and the meta
    committed with it."""
    pending = topics.batch()
    resent = [pending.resent(t, p, r, rx) for rx, (t, p, r) in enumerate(deliveries, 1)]
    meta = dict(pending.meta())
    topics.committed(pending)
    return resent, meta


def test_a_retained_message_sent_again_with_the_same_payload_is_not_stored_again():
    topics = RetainedTopics()
    resent, _ = commit(topics, [("cfg/a", b"1", True), ("cfg/b", b"2", True)])
    assert resent == [False, False]
    resent, _ = commit(topics, [("cfg/a", b"1", True), ("cfg/b", b"3", True)])
    assert resent == [True, False]                       # same payload / new payload


def test_a_live_message_is_always_stored_and_becomes_what_the_broker_retains():
    topics = RetainedTopics()
    commit(topics, [("state/x", b"on", True)])
    resent, _ = commit(topics, [("state/x", b"off", False), ("state/x", b"off", False)])
    assert resent == [False, False]                      # live: always stored
    resent, _ = commit(topics, [("state/x", b"off", True)])   # the broker's copy of "off"
    assert resent == [True]
    # a topic never seen retained is not remembered: its live messages cost nothing
    commit(topics, [("live/y", b"1", False)])
    assert len(topics) == 1
    assert commit(topics, [("live/y", b"1", True)])[0] == [False]


def test_a_re_send_in_the_same_batch_as_its_live_copy_is_recognised():
    topics = RetainedTopics()
    resent, meta = commit(topics, [("t", b"v", True), ("t", b"w", False), ("t", b"w", True)])
    assert resent == [False, False, True]
    assert list(meta) == [META_PREFIX + "t"] and meta[META_PREFIX + "t"].startswith("2 ")


def test_what_is_remembered_survives_a_restart_through_the_meta_committed_with_the_batch():
    topics = RetainedTopics()
    _, meta = commit(topics, [(f"cfg/{i}", f"v{i}".encode(), True) for i in range(5)])
    restarted = RetainedTopics(meta)
    assert commit(restarted, [(f"cfg/{i}", f"v{i}".encode(), True) for i in range(5)])[0] == \
        [True] * 5
    assert RetainedTopics({META_PREFIX + "bad": "not a value"}).batch().resent(
        "bad", b"x", True, 1) is False                   # unreadable: stored (the safe side)


def test_past_the_limit_the_topic_with_the_oldest_message_is_forgotten():
    topics = RetainedTopics(limit=3)
    commit(topics, [("a", b"1", True), ("b", b"1", True), ("c", b"1", True)])
    assert commit(topics, [("a", b"1", True)])[0] == [True]        # a is recent again
    resent, meta = commit(topics, [("d", b"1", True)])
    assert resent == [False] and meta[META_PREFIX + "b"] is None   # b: oldest, deleted
    assert len(topics) == 3
    assert commit(topics, [("b", b"1", True)])[0] == [False]       # forgotten: stored again
    restored = RetainedTopics({META_PREFIX + t: f"{rx} {'00' * 16}"
                               for t, rx in (("x", 3), ("y", 1), ("z", 2))}, limit=2)
    assert len(restored) == 2 and not restored.batch().resent("y", b"", False, 9)


# --- subscriptions ------------------------------------------------------------------------------

class Meta:
    """The queue's meta value as the committer would write it (at once, here)."""

    def __init__(self, value: str | None = None):
        self.value = value

    def save(self, value: str) -> threading.Event:
        self.value = value
        done = threading.Event()
        done.set()
        return done


def subs(meta: Meta, filters=("a/#", "b/#"), v5=False, broker="h:1883", qos=1) -> Subscriptions:
    return Subscriptions(broker, "ingestor", qos, filters, v5, meta.value, meta.save)


def connect(s: Subscriptions, session_present: bool) -> Plan:
    while not s.ready_to_connect():
        pass
    s.connect_sent()
    return s.on_connack(session_present)


def confirm_all(s: Subscriptions, plan: Plan) -> None:
    for mid, filters in enumerate((plan.subscribe, plan.unsubscribe), 1):
        if filters:
            s.sent(mid, "x", filters)
    if not s.waiting:
        s.confirm()
    for mid in list(s.waiting):
        s.acknowledged(mid)


def test_first_connect_subscribes_all_then_a_present_session_needs_nothing():
    meta = Meta()
    first = subs(meta)
    plan = connect(first, session_present=False)
    assert plan == Plan(("a/#", "b/#"), ())
    confirm_all(first, plan)
    assert Record.loads(meta.value).held == ("a/#", "b/#")
    again = subs(meta)                                   # a restart
    assert connect(again, session_present=True) == Plan((), ())
    assert subs(meta).on_connack(False) == Plan(("a/#", "b/#"), ())   # session lost: all


def test_changed_filters_subscribe_the_new_and_unsubscribe_the_removed():
    meta = Meta()
    s = subs(meta)
    confirm_all(s, connect(s, False))
    changed = subs(meta, filters=("a/#", "c/+"))
    plan = connect(changed, True)
    assert plan == Plan(("c/+",), ("b/#",))
    confirm_all(changed, plan)
    assert Record.loads(meta.value) == Record("h:1883", "ingestor", 1, ("a/#", "c/+"),
                                              ("a/#", "c/+"))


def test_a_process_killed_between_connect_and_confirmation_leaves_nothing_trusted():
    meta = Meta()
    s = subs(meta)
    confirm_all(s, connect(s, False))
    killed = subs(meta, filters=("a/#", "c/+"))
    assert killed.ready_to_connect()                     # written before CONNECT goes out
    killed.connect_sent()                                # ... and the process dies here
    stored = Record.loads(meta.value)
    assert stored.held is None and set(stored.possible) == {"a/#", "b/#", "c/+"}
    # the broker may hold anything of it: subscribe all wanted, unsubscribe the rest
    assert connect(subs(meta), True) == Plan(("a/#", "b/#"), ("c/+",))


def test_a_connect_without_connack_makes_the_session_unknown_in_the_same_process():
    meta = Meta()
    s = subs(meta)
    confirm_all(s, connect(s, False))
    assert s.ready_to_connect()
    s.connect_sent()                                     # CONNECT out, no CONNACK read
    assert connect(s, True) == Plan(("a/#", "b/#"), ())


def test_mqtt5_always_subscribes_and_another_broker_or_qos_is_not_trusted():
    meta = Meta()
    s = subs(meta)
    confirm_all(s, connect(s, False))
    assert connect(subs(meta, v5=True), True) == Plan(("a/#", "b/#"), ())
    assert connect(subs(meta, broker="other:1883"), True) == Plan(("a/#", "b/#"), ())
    assert connect(subs(Meta(meta.value), qos=0), True) == Plan(("a/#", "b/#"), ())
    assert Record.loads("{not json") is None and Record.loads(None) is None
