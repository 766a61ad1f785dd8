"""The MQTT collector against a real Mosquitto, run as the administrator runs it:
``ha-ingestor --config X collect mqtt``. What reached the queue is read back with the queue's
Consumer (the writer's side), the way the writer would see it."""

from __future__ import annotations

import threading
import time
import urllib.request

import pytest

from ha_ingestor import queue
from ha_ingestor.envelope import mqtt_payload
from tests.support.fixtures_ingestor import collector_config, start_collector
from tests.support.fixtures_mosquitto import (make_certificates, make_payload, publish,
                                              publisher_process, tls_listener_conf)
from tests.support.procs import free_port, kill_process, stop_process, tail, wait_until

BATCH_EVENTS = 1000  # the default queue.batch_events


# --- helpers -----------------------------------------------------------------------------------


def queued(ing) -> int:
    """Events in the queue (ready or in flight), counted without taking them."""
    status = queue.read_status(ing.queue_dir, "mqtt")
    return 0 if status is None else status.ready + status.in_flight


def drain(ing) -> list[dict]:
    """Take and acknowledge every event in the queue, as the writer does."""
    consumer = ing.consumer("mqtt")
    events: list[dict] = []
    try:
        while True:
            batches = consumer.take(50_000)
            if not batches:
                return events
            for batch in batches:
                events.extend(batch.events)
            consumer.ack([batch.item_id for batch in batches])
    finally:
        consumer.close()


def payload_texts(events: list[dict]) -> list[str]:
    return [mqtt_payload(event).decode() for event in events]


def wait_queued(ing, count: int, timeout: float, proc=None) -> None:
    try:
        wait_until(lambda: queued(ing) >= count, timeout, f"{count} events in the queue")
    except TimeoutError:
        log = tail(ing.log_path("mqtt")) if proc is None else ""
        raise AssertionError(f"{queued(ing)} of {count} events queued\n{log}") from None


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


# --- 1. 10 000 messages while running ----------------------------------------------------------


def test_10000_qos1_messages_arrive_with_topic_payload_qos_and_retain(mosquitto, ingestor):
    # Retained messages published before the collector subscribes arrive with retain=1.
    publish(mosquitto.port, 3, topic="retained/{i}", retain=True)
    ing = ingestor(collector_config(mosquitto.port))
    proc = start_collector(ing)

    publish(mosquitto.port, 10_000, topic="home/sensor_{i}/state", qos=1)
    publish(mosquitto.port, 5, topic="home/qos0/{i}", qos=0, start=20_000)
    wait_queued(ing, 10_008, 60)
    assert stop_process(proc) == 0

    events = drain(ing)
    assert len(events) == 10_008
    live = [e for e in events if e["topic"].startswith("home/sensor_")]
    assert sorted((e["topic"], mqtt_payload(e)) for e in live) == sorted(
        (f"home/sensor_{i}/state", make_payload(i)) for i in range(10_000))
    assert {(e["qos"], e["retain"]) for e in live} == {(1, False)}
    assert payload_texts(live) == [f"m{i}" for i in range(10_000)]  # in publish order
    retained = [e for e in events if e["topic"].startswith("retained/")]
    assert sorted((e["topic"], e["retain"], e["qos"]) for e in retained) == [
        (f"retained/{i}", True, 1) for i in range(3)]
    qos0 = [e for e in events if e["topic"].startswith("home/qos0/")]
    assert {e["qos"] for e in qos0} == {0} and len(qos0) == 5
    assert all(e["src"] == "mqtt" and isinstance(e["rx"], int) for e in events)


# --- 2. SIGKILL half-way through a burst -------------------------------------------------------


def test_sigkill_halfway_through_20000_burst_loses_nothing(mosquitto, ingestor):
    total = 20_000
    ing = ingestor(collector_config(mosquitto.port))
    proc = start_collector(ing)
    publisher = publisher_process(mosquitto.port, total, topic="burst/{i}", qos=1)
    try:
        wait_until(lambda: queued(ing) >= total // 2 or publisher.poll() is not None, 60,
                   "half of the burst queued")
        at_kill = queued(ing)
        kill_process(proc)   # SIGKILL: no chance to flush or acknowledge anything
        assert at_kill < total, "the burst was over before the kill; nothing was tested"
        proc = start_collector(ing)
        out, err = publisher.communicate(timeout=120)
        assert publisher.returncode == 0, err
    finally:
        if publisher.poll() is None:
            kill_process(publisher)

    wait_queued(ing, total, 60)
    time.sleep(1.0)  # late redeliveries, if any, land too
    assert stop_process(proc) == 0
    texts = payload_texts(drain(ing))
    distinct = set(texts)
    duplicates = len(texts) - len(distinct)
    print(f"\nSIGKILL at {at_kill} of {total} queued: {len(texts)} events, {len(distinct)} "
          f"distinct, {duplicates} duplicates (one batch is {BATCH_EVENTS})")
    assert distinct == {f"m{i}" for i in range(total)}
    assert duplicates <= BATCH_EVENTS


# --- 3. stopped while messages are published ---------------------------------------------------


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_messages_published_while_stopped_arrive_after_start(mosquitto, ingestor, protocol):
    ing = ingestor(collector_config(mosquitto.port, protocol=protocol,
                                    client_id=f"test-offline-{protocol}"))
    proc = start_collector(ing)
    publish(mosquitto.port, 10, topic="before/{i}")
    wait_queued(ing, 10, 30)
    assert stop_process(proc) == 0, tail(ing.log_path("mqtt"))

    publish(mosquitto.port, 5000, topic="offline/{i}", start=100)   # nobody is listening
    start_collector(ing)
    wait_queued(ing, 5010, 60)
    texts = payload_texts(drain(ing))
    assert sorted(texts) == sorted([f"m{i}" for i in range(10)] +
                                   [f"m{i}" for i in range(100, 5100)])


# --- 4. broker restart mid-stream --------------------------------------------------------------


def test_broker_restart_mid_stream_loses_no_acknowledged_qos1_message(mosquitto, ingestor):
    ing = ingestor(collector_config(mosquitto.port))
    start_collector(ing)
    result = {}

    def stream():
        result["r"] = publish(mosquitto.port, 6000, topic="stream/{i}", pace=1500,
                              client_id="test-stream", tolerate_disconnect=True, timeout=60)

    publisher = threading.Thread(target=stream)
    publisher.start()
    wait_until(lambda: queued(ing) >= 1500, 30, "stream under way")
    mosquitto.stop()          # SIGTERM: Mosquitto saves sessions and queued messages
    time.sleep(1.0)
    mosquitto.start()
    publisher.join(90)
    assert not publisher.is_alive()
    acked = result["r"].acked
    assert len(acked) == 6000, "the publisher could not re-send after the restart"

    want = {f"m{i}" for i in acked}
    try:
        wait_until(lambda: want <= set(payload_texts(ing.read_all("mqtt"))), 60,
                   "every acknowledged message queued")
    except TimeoutError:
        pass   # the assertion below names what is missing
    texts = payload_texts(drain(ing))
    missing = [i for i in acked if f"m{i}" not in set(texts)]
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {missing[:5]}"
    print(f"\nbroker restart: {len(texts) - len(set(texts))} duplicates")
    assert len(texts) - len(set(texts)) <= BATCH_EVENTS
    log = ing.log_path("mqtt").read_text()
    assert log.count("lost connection to MQTT broker") == 1
    assert log.count("connected to MQTT broker") == 2


# --- 5. bad payloads ---------------------------------------------------------------------------


def test_bad_payloads_are_stored_exactly_or_dead_lettered_and_collector_keeps_running(
        mosquitto, ingestor):
    limit = 1024 * 1024
    ing = ingestor(collector_config(mosquitto.port))
    proc = start_collector(ing)
    payloads = {
        "odd/empty": b"",
        "odd/invalid_utf8": b"\xff\xfe\xfa not utf-8 \xc3\x28",
        "odd/binary": bytes(range(256)) * 4,
        "odd/exactly_1mib": b"x" * limit,
        "odd/too_large": b"y" * (limit + 1),
        "odd/json": '{"temperature": 21.5, "name": "Küche ☃"}'.encode(),
    }
    for topic, payload in payloads.items():
        publish(mosquitto.port, 1, topic=topic, payloads=[payload])
    publish(mosquitto.port, 1, topic="odd/after", payloads=[b"still running"])
    wait_queued(ing, len(payloads), 30)
    assert proc.poll() is None

    events = {event["topic"]: event for event in drain(ing)}
    expected = {t: p for t, p in payloads.items() if t != "odd/too_large"}
    expected["odd/after"] = b"still running"
    assert set(events) == set(expected)
    for topic, payload in expected.items():
        assert mqtt_payload(events[topic]) == payload, topic
    assert events["odd/binary"]["pe"] == "b64" and events["odd/json"]["pe"] == "utf8"

    dead = queue.list_dead(ing.queue_dir, "mqtt")
    assert len(dead) == 1
    assert dead[0].event["topic"] == "odd/too_large"
    assert mqtt_payload(dead[0].event) == payloads["odd/too_large"]
    assert f"{limit + 1} bytes" in dead[0].reason and "max_payload_bytes" in dead[0].reason
    metrics = scrape(ing.config["metrics"]["ports"]["mqtt"])
    assert 'ha_ingestor_dead_letters_total{reason="payload_too_large",source="mqtt"} 1.0' \
        in metrics
    assert stop_process(proc) == 0


def test_exclude_filters_keep_matching_topics_out(mosquitto, ingestor):
    ing = ingestor(collector_config(mosquitto.port, topics=["home/#", "tele/+/SENSOR"],
                                    exclude_topics=["home/noisy/#", "home/+/debug"]))
    proc = start_collector(ing)
    for topic in ("home/kitchen/temp", "home/noisy", "home/noisy/a/b", "home/kitchen/debug",
                  "home/a/b/debug", "tele/plug/SENSOR", "tele/plug/STATE", "other/x"):
        publish(mosquitto.port, 1, topic=topic, payloads=[topic.encode()])
    wait_queued(ing, 3, 30)
    time.sleep(0.5)
    assert stop_process(proc) == 0
    assert sorted(e["topic"] for e in drain(ing)) == [
        "home/a/b/debug", "home/kitchen/temp", "tele/plug/SENSOR"]


# --- 6. credentials and an unreachable broker --------------------------------------------------


def test_wrong_password_exits_3_saying_authentication_failed(mosquitto_factory, ingestor):
    broker = mosquitto_factory("secured", users={"ingestor": "right"})
    ing = ingestor(collector_config(broker.port, username="ingestor", password="wrong"))
    result = ing.run("collect", "mqtt", timeout=30)
    assert result.returncode == 3, result.stderr
    assert "authentication failed" in result.stderr.lower()
    assert "retrying" not in result.stderr        # refused for good: no retry loop, no noise

    ing.write_config({"mqtt": {"password": "right"}})
    proc = start_collector(ing)
    publish(broker.port, 10, topic="auth/{i}", username="ingestor", password="right")
    wait_queued(ing, 10, 30)
    assert stop_process(proc) == 0


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_refused_client_id_exits_3(mosquitto_factory, ingestor, protocol):
    broker = mosquitto_factory("prefixes", extra_conf=("clientid_prefixes ingest-",))
    ing = ingestor(collector_config(broker.port, protocol=protocol))   # "test-collector"
    result = ing.run("collect", "mqtt", timeout=30)
    assert result.returncode == 3, result.stderr
    assert "authentication failed" in result.stderr.lower() and "client_id" in result.stderr


def test_unusable_queue_file_exits_4_naming_it(mosquitto, ingestor):
    ing = ingestor(collector_config(mosquitto.port))
    ing.queue_dir.mkdir(parents=True, exist_ok=True)
    (ing.queue_dir / "mqtt.db").write_bytes(b"this is not a SQLite file" * 100)
    result = ing.run("collect", "mqtt", timeout=30)
    assert result.returncode == 4, result.stderr
    assert "mqtt.db" in result.stderr


def test_invalid_topic_filter_exits_2_naming_the_key(mosquitto, ingestor):
    ing = ingestor(collector_config(mosquitto.port, exclude_topics=["home/+/x", "a/#/b"]))
    result = ing.run("collect", "mqtt", timeout=30)
    assert result.returncode == 2, result.stderr
    assert "mqtt.exclude_topics" in result.stderr and "'a/#/b'" in result.stderr


def test_unreachable_broker_is_retried_with_backoff_until_it_appears(mosquitto_factory, ingestor):
    broker = mosquitto_factory("late", start=False, port=free_port())
    ing = ingestor(collector_config(broker.port))
    proc = ing.start("collect", "mqtt", log="mqtt")
    time.sleep(4.0)
    assert proc.poll() is None, tail(ing.log_path("mqtt"))
    log = ing.log_path("mqtt").read_text()
    assert log.count("cannot connect to MQTT broker") == 1, log   # one line, not one per attempt

    broker.start()
    wait_until(lambda: "subscribed to" in ing.log_path("mqtt").read_text(), 40,
               "collector connected once the broker is up")
    publish(broker.port, 100, topic="late/{i}")
    wait_queued(ing, 100, 30)
    log = ing.log_path("mqtt").read_text()
    assert "after" in log.split("connected to MQTT broker", 1)[1].splitlines()[0]
    assert stop_process(proc) == 0


# --- TLS ---------------------------------------------------------------------------------------


def test_tls_with_ca_file_and_without_verification(mosquitto_factory, ingestor, tmp_path):
    certs = make_certificates(tmp_path / "certs")
    broker = mosquitto_factory("tls", extra_conf=tls_listener_conf(certs))
    ing = ingestor(collector_config(broker.port, tls={"ca_file": str(certs["ca"])}))
    proc = start_collector(ing)
    publish(broker.port, 3000, topic="tls/{i}", ca_file=certs["ca"])
    wait_queued(ing, 3000, 30)
    assert stop_process(proc) == 0
    assert sorted(payload_texts(drain(ing))) == sorted(f"m{i}" for i in range(3000))

    # Without the CA the certificate cannot be verified: the collector retries, never stores.
    ing.write_config({"mqtt": {"tls": {"ca_file": None, "enabled": True}}})
    proc = ing.start("collect", "mqtt", log="untrusted")
    wait_until(lambda: "cannot connect to MQTT broker" in ing.log_path("untrusted").read_text(),
               20, "certificate refused")
    assert "CERTIFICATE_VERIFY_FAILED" in ing.log_path("untrusted").read_text()
    assert proc.poll() is None
    assert stop_process(proc) == 0

    ing.write_config({"mqtt": {"tls": {"enabled": True, "verify": False}}})
    proc = start_collector(ing, log="noverify")
    publish(broker.port, 10, topic="tls/late/{i}", ca_file=certs["ca"])
    wait_queued(ing, 10, 30)
    assert stop_process(proc) == 0


# --- queue full --------------------------------------------------------------------------------


def test_full_queue_pauses_without_loss_and_resumes_when_space_frees(mosquitto, ingestor):
    total = 6000
    ing = ingestor({**collector_config(mosquitto.port),
                    "queue": {"max_bytes": "2MiB", "batch_events": 20}})
    proc = start_collector(ing)
    # The producer re-measures the file at most every 0.5 s: fill it, then keep publishing.
    publish(mosquitto.port, total // 2, topic="full/{i}", payload_size=800)
    time.sleep(1.0)
    publish(mosquitto.port, total // 2, topic="full/{i}", payload_size=800, start=total // 2)
    wait_until(lambda: "queue full" in ing.log_path("mqtt").read_text(), 30, "queue full")
    time.sleep(1.0)
    assert proc.poll() is None
    held_back = queued(ing)
    assert held_back < total
    metrics = scrape(ing.config["metrics"]["ports"]["mqtt"])
    assert 'ha_ingestor_queue_full{source="mqtt"} 1.0' in metrics

    # The writer's side frees space: everything arrives, nothing is lost, no crash loop.
    texts: list[str] = []
    deadline = time.monotonic() + 60
    consumer = ing.consumer("mqtt")   # one long-lived consumer, as the writer is
    try:
        while len(set(texts)) < total and time.monotonic() < deadline:
            for batch in consumer.take(500):
                texts.extend(payload_texts(batch.events))
                consumer.ack([batch.item_id])
            time.sleep(0.05)
    finally:
        consumer.close()
    assert {t.rstrip(".") for t in texts} == {f"m{i}" for i in range(total)}
    log = ing.log_path("mqtt").read_text()
    assert "queue has space again" in log
    assert log.count("connected to MQTT broker") == 1     # paused, never reconnected
    assert proc.poll() is None
    assert stop_process(proc) == 0


def test_qos0_flood_into_a_full_queue_pauses_the_session_cleanly_and_resumes(mosquitto, ingestor):
    """QoS 0 has no flow control: the collector stops reading, then disconnects cleanly (no
    keepalive expiry, no reconnect while full) and comes back when the writer frees space."""
    ing = ingestor({**collector_config(mosquitto.port, qos=0, keepalive="4s"),
                    "queue": {"max_bytes": "2MiB", "batch_events": 20}})
    proc = start_collector(ing)
    publish(mosquitto.port, 5_000, topic="flood/{i}", qos=0, payload_size=500)
    time.sleep(1.0)    # the producer re-measures the file at most every 0.5 s
    publish(mosquitto.port, 20_000, topic="flood/{i}", qos=0, payload_size=500, start=5_000)
    log_path = ing.log_path("mqtt")
    wait_until(lambda: "disconnecting from MQTT broker" in log_path.read_text(), 30,
               "paused session")
    time.sleep(3.0)              # full for a while: no reconnect attempts, no crash
    assert proc.poll() is None
    log = log_path.read_text()
    assert log.count("connected to MQTT broker") == 1 and "Keep alive" not in log

    consumer = ing.consumer("mqtt")
    try:
        wait_until(lambda: bool(consumer.ack([b.item_id for b in consumer.take(1000)]) or
                                log_path.read_text().count("connected to MQTT broker") == 2),
                   60, "reconnected once the queue had space")
        publish(mosquitto.port, 50, topic="after/{i}", qos=0)
        texts: set[str] = set()
        deadline = time.monotonic() + 30
        while not {f"m{i}" for i in range(50)} <= texts and time.monotonic() < deadline:
            for batch in consumer.take(1000):
                texts |= {mqtt_payload(e).decode() for e in batch.events
                          if e["topic"].startswith("after/")}
                consumer.ack([batch.item_id])
            time.sleep(0.05)
    finally:
        consumer.close()
    assert {f"m{i}" for i in range(50)} <= texts
    assert proc.poll() is None
    assert stop_process(proc) == 0
