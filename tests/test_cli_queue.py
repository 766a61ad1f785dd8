"""`ha-ingestor queue ...`: status, peek, dead, requeue-dead and purge, as an operator uses them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from ha_ingestor.envelope import ha_event, mqtt_event
from ha_ingestor.queue import Consumer, Producer

CLI = [sys.executable, "-m", "ha_ingestor"]
ROOT = Path(__file__).resolve().parent.parent


def queue_cli(queue_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + ["queue", *args, "--queue-dir", str(queue_dir)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_status_on_missing_directory_says_so_and_exits_0(tmp_path):
    result = queue_cli(tmp_path / "nothing-here", "status")
    assert result.returncode == 0
    assert "does not exist yet" in result.stdout
    as_json = queue_cli(tmp_path / "nothing-here", "status", "--json")
    assert json.loads(as_json.stdout) == {"queues": {
        s: {"ready": 0, "in_flight": 0, "dead": 0, "oldest_age_s": None, "bytes": 0}
        for s in ("mqtt", "ha", "import")}}


def test_status_on_empty_directory(tmp_path):
    result = queue_cli(tmp_path, "status")
    assert result.returncode == 0
    assert result.stdout.count("(no queue file yet)") == 3


def test_status_counts_events_not_batches(tmp_path):
    producer = Producer(tmp_path, "mqtt", 2**30)
    for _ in range(3):
        producer.append([mqtt_event("a/b", b"1", 1, False) for _ in range(100)])
    Producer(tmp_path, "ha", 2**30).append([ha_event({"event_type": "x"})])
    Consumer(tmp_path, "mqtt").take(100)                       # one item in flight
    time.sleep(0.05)
    status = json.loads(queue_cli(tmp_path, "status", "--json").stdout)["queues"]
    assert status["mqtt"]["ready"] == 200 and status["mqtt"]["in_flight"] == 100
    assert status["ha"]["ready"] == 1 and status["ha"]["dead"] == 0
    assert status["mqtt"]["oldest_age_s"] >= 0.05 and status["mqtt"]["bytes"] > 0
    text = queue_cli(tmp_path, "status").stdout
    assert "mqtt" in text and "200" in text


def test_corrupt_file_is_named_without_traceback(tmp_path):
    (tmp_path / "mqtt.db").write_bytes(b"this is not an SQLite database, not at all" * 10)
    result = queue_cli(tmp_path, "status")
    assert result.returncode == 4
    assert "mqtt.db" in result.stderr and "not a readable queue file" in result.stderr
    assert "Traceback" not in result.stderr


def test_status_while_a_producer_and_consumer_run(tmp_path):
    worker = [sys.executable, "-m", "tests.support.queue_worker"]
    producer = subprocess.Popen(worker + ["produce", str(tmp_path), "100000", "100",
                                          "--seconds", "6"], stdout=subprocess.DEVNULL, cwd=ROOT)
    consumer = subprocess.Popen(worker + ["consume", str(tmp_path), str(tmp_path / "seen"),
                                          "--seconds", "12"], stdout=subprocess.DEVNULL, cwd=ROOT)
    try:
        time.sleep(1)
        for _ in range(5):
            result = queue_cli(tmp_path, "status", "--json")
            assert result.returncode == 0, result.stderr
            assert set(json.loads(result.stdout)["queues"]["mqtt"]) == {
                "ready", "in_flight", "dead", "oldest_age_s", "bytes"}
            assert queue_cli(tmp_path, "peek", "--source", "mqtt", "-n", "3").returncode == 0
    finally:
        producer.wait(30)
        consumer.wait(30)


def test_peek_dead_requeue_and_purge(tmp_path):
    producer = Producer(tmp_path, "mqtt", 2**30)
    producer.append([mqtt_event("zigbee2mqtt/kitchen", b'{"temperature": 21.5}', 1, True),
                     mqtt_event("bin/blob", b"\xff\xfe\x00", 0, False)])
    peek = queue_cli(tmp_path, "peek", "--source", "mqtt")
    assert "mqtt zigbee2mqtt/kitchen" in peek.stdout and "mqtt bin/blob" in peek.stdout
    as_json = queue_cli(tmp_path, "peek", "--source", "mqtt", "--json").stdout.splitlines()
    assert json.loads(as_json[1])["pe"] == "b64"

    consumer = Consumer(tmp_path, "mqtt")
    batch = consumer.take(10)[0]
    consumer.dead_letter([(batch.events[1], "unable to parse 'bin/blob': invalid field")])
    consumer.ack([batch.item_id])
    dead = queue_cli(tmp_path, "dead")
    assert "mqtt #1 mqtt bin/blob: unable to parse 'bin/blob': invalid field" in dead.stdout
    assert "1 dead letter(s)" in dead.stdout

    requeue = queue_cli(tmp_path, "requeue-dead", "--source", "mqtt")
    assert "mqtt: requeued 1 dead letter(s)" in requeue.stdout
    status = json.loads(queue_cli(tmp_path, "status", "--json").stdout)["queues"]["mqtt"]
    assert (status["ready"], status["dead"]) == (1, 0)
    assert consumer.take(10)[0].events[0]["p"] == batch.events[1]["p"]

    refused = queue_cli(tmp_path, "purge")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    purged = queue_cli(tmp_path, "purge", "--yes", "--source", "mqtt")
    assert "mqtt: deleted 1 event(s)" in purged.stdout
