"""Envelope round trips, queue.max_bytes, and the CI rule that a missing server fails, not skips."""

from __future__ import annotations

import json
import os

import pytest

from ha_ingestor.envelope import (KIND_RESYNC, ha_event, mqtt_event, mqtt_payload,
                                  state_as_event)
from ha_ingestor.errors import QueueFull
from ha_ingestor.queue import Consumer, Producer
from tests.support import procs

PAYLOADS = [b"", b"21.5", "temp\u00e9rature \U0001F321".encode(), b"\xff\xfe\x00\x01binary",
            bytes(range(256)), b'{"state":"ON"}', os.urandom(1 << 20)]


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: f"{len(p)}B")
def test_mqtt_payload_round_trips_exactly_through_the_queue(tmp_path, payload):
    producer = Producer(tmp_path, "mqtt", 2**40)
    producer.append([mqtt_event("a/b", payload, 1, True, 123)])
    event = Consumer(tmp_path, "mqtt").take(1)[0].events[0]
    assert mqtt_payload(event) == payload
    assert (event["topic"], event["qos"], event["retain"], event["rx"]) == ("a/b", 1, True, 123)


def test_ha_event_is_stored_as_received():
    with _sample("event_state_changed_input_number.json") as fh:
        frame = json.load(fh)
    envelope = json.loads(json.dumps(ha_event(frame["event"], received_ns=5)))
    assert envelope["event"] == frame["event"] and envelope["kind"] == "live"


def test_state_as_event_uses_last_updated_as_time_fired():
    state = {"entity_id": "sensor.t", "state": "21.5", "attributes": {"unit_of_measurement": "°C"},
             "last_changed": "2026-11-27T15:57:40.000001+00:00",
             "last_updated": "2026-11-27T15:57:48.944405+00:00"}
    envelope = state_as_event(state, KIND_RESYNC)
    assert envelope["event"]["time_fired"] == state["last_updated"]
    assert envelope["event"]["data"]["new_state"] == state and envelope["kind"] == "resync"


def test_full_queue_refuses_appends_and_recovers_when_drained(tmp_path, monkeypatch):
    monkeypatch.setattr("ha_ingestor.queue.FULL_RECHECK_S", 0.0)
    producer = Producer(tmp_path, "mqtt", max_bytes=1_500_000)
    big = [mqtt_event("a", b"x" * 1000, 1, False) for _ in range(100)]
    appended = 0
    with pytest.raises(QueueFull, match="queue is full .*queue.max_bytes"):
        for _ in range(100):
            producer.append(big)
            appended += 1
    assert 1 <= appended < 100
    consumer = Consumer(tmp_path, "mqtt")
    while batches := consumer.take(1000):
        consumer.ack(b.item_id for b in batches)
    assert not producer.is_full()
    producer.append(big)


def test_missing_server_binary_fails_under_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="install the Debian package"):
        procs.require_binary("no-such-server-binary", "no-such-package")
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception):
        procs.require_binary("no-such-server-binary", "no-such-package")


def _sample(name: str):
    return open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "ha-samples",
                             name))
