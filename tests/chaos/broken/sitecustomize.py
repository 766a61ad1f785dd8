"""Deliberately broken builds, for proving that the chaos harness notices a broken guarantee.

Python imports ``sitecustomize`` at start-up from ``sys.path``; the harness test puts this folder on
``PYTHONPATH`` of ``ha-ingestor run`` only, so every child process it spawns loads the patch named by
``CHAOS_BROKEN_BUILD``. Nothing here is imported by the product or by a normal run.

- ``writer_ack_before_write``: the writer's queue consumer acknowledges items the moment it takes
  them, before InfluxDB accepted anything; a writer that dies holding them loses them.
- ``collector_duplicates``: collectors commit every MQTT event twice (the copy received 1 ms later),
  as a collector that re-stores a redelivered message would.
- ``collector_drops``: collectors silently skip committing one batch in 25.
- ``collector_restores_retained``: the MQTT collector subscribes again on every connect and stores
  every retained message the broker sends, as it did before retained messages were recognised.
"""

import os

_VARIANT = os.environ.get("CHAOS_BROKEN_BUILD", "")


def _writer_ack_before_write(queue) -> None:
    take = queue.Consumer.take

    def take_and_ack(self, max_events):
        batches = take(self, max_events)
        if batches:
            self.ack([b.item_id for b in batches])
        return batches
    queue.Consumer.take = take_and_ack


def _collector_duplicates(queue) -> None:
    append = queue.Producer.append

    def append_twice(self, events, *args, **kwargs):
        copies = [dict(e, rx=e["rx"] + 1_000_000) for e in events if e.get("src") == "mqtt"]
        return append(self, list(events) + copies, *args, **kwargs)
    queue.Producer.append = append_twice


def _collector_drops(queue) -> None:
    append = queue.Producer.append
    calls = {"n": 0}

    def append_sometimes(self, events, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] % 25 == 0:
            return 0            # reported as committed, never written
        return append(self, events, *args, **kwargs)
    queue.Producer.append = append_sometimes


def _collector_restores_retained(_queue) -> None:
    from collectors.mqtt import retained, subscriptions

    def subscribe_all(self, _session_present):
        self.waiting.clear()
        return subscriptions.Plan(self.wanted, ())

    def never_resent(self, topic, payload, retain, rx):
        self.record(topic, payload, retain, rx)
        return False
    subscriptions.Subscriptions.on_connack = subscribe_all
    retained.Pending.resent = never_resent


_PATCHES = {"writer_ack_before_write": _writer_ack_before_write,
            "collector_duplicates": _collector_duplicates,
            "collector_drops": _collector_drops,
            "collector_restores_retained": _collector_restores_retained}

if _VARIANT:
    from ha_ingestor import queue as _queue
    _PATCHES[_VARIANT](_queue)
