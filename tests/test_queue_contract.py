"""The durable queue's contract, each scenario with real processes on one SQLite file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ha_ingestor.queue import Consumer, Producer, read_status

WORKER = [sys.executable, "-m", "tests.support.queue_worker"]
ROOT = Path(__file__).resolve().parent.parent


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen(WORKER + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)


def read_line(proc: subprocess.Popen, prefix: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith(prefix):
            return line.strip()
        if not line and proc.poll() is not None:
            raise AssertionError(f"worker exited {proc.returncode}: {proc.stderr.read()}")
    raise AssertionError(f"no {prefix!r} line within {timeout} s")


def drain(queue_dir: Path) -> list[dict]:
    consumer = Consumer(queue_dir, "mqtt")
    events = []
    while batches := consumer.take(10_000):
        events.extend(e for b in batches for e in b.events)
        consumer.ack(b.item_id for b in batches)
    consumer.close()
    return events


def test_producer_killed_mid_stream_keeps_every_committed_batch_and_no_half_batch(tmp_path):
    proc = spawn("produce", str(tmp_path), "100000", "500")
    read_line(proc, "committed 20")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    committed = [int(line.split()[1]) for line in proc.stdout.read().splitlines()
                 if line.startswith("committed")]
    last_reported = max(committed, default=20)

    events = drain(tmp_path)
    by_batch: dict[int, list[int]] = {}
    for event in events:
        by_batch.setdefault(event["batch"], []).append(event["seq"])
    assert set(range(last_reported + 1)) <= set(by_batch), "a committed batch is missing"
    assert sorted(by_batch) == list(range(len(by_batch))), "batches are not contiguous"
    for batch, seqs in by_batch.items():
        assert seqs == list(range(batch * 500, batch * 500 + 500)), f"batch {batch} is partial"


def test_consumer_killed_between_take_and_ack_gets_the_batch_again(tmp_path):
    producer = Producer(tmp_path, "mqtt", 2**40)
    for batch in range(3):
        producer.append([{"seq": batch * 10 + i} for i in range(10)])
    proc = spawn("consume", str(tmp_path), str(tmp_path / "seen.txt"), "--hold")
    taken = read_line(proc, "took").split()[1:]
    assert read_status(tmp_path, "mqtt").in_flight == 30
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    consumer = Consumer(tmp_path, "mqtt")
    again = consumer.take(1000)
    assert [str(b.item_id) for b in again] == taken
    assert sorted(e["seq"] for b in again for e in b.events) == list(range(30))


def test_producer_restart_does_not_steal_the_consumers_in_flight_items(tmp_path):
    producer = Producer(tmp_path, "mqtt", 2**40)
    producer.append([{"seq": i} for i in range(10)])
    producer.append([{"seq": 10 + i} for i in range(10)])
    consumer = Consumer(tmp_path, "mqtt")
    first = consumer.take(10)
    assert [len(b.events) for b in first] == [10]

    producer.close()                                   # the collector restarts
    restarted = Producer(tmp_path, "mqtt", 2**40)
    restarted.append([{"seq": 20 + i} for i in range(10)])

    status = read_status(tmp_path, "mqtt")
    assert (status.ready, status.in_flight) == (20, 10)
    rest = consumer.take(1000)
    seqs = [e["seq"] for b in first + rest for e in b.events]
    assert sorted(seqs) == list(range(30)), "an in-flight item was handed out twice"


def test_producer_and_consumer_together_for_30_s_reconcile_exactly(tmp_path):
    seen = tmp_path / "seen.txt"
    producer = spawn("produce", str(tmp_path), "10000000", "200", "--seconds", "30",
                     "--rate", "40000")
    consumer = spawn("consume", str(tmp_path), str(seen), "--seconds", "120")
    producer_out, producer_err = producer.communicate(timeout=150)
    consumer_out, consumer_err = consumer.communicate(timeout=150)
    assert producer.returncode == 0 and consumer.returncode == 0, producer_err + consumer_err
    assert "locked" not in producer_err + consumer_err

    batches = sum(1 for line in producer_out.splitlines() if line.startswith("committed"))
    seqs = [int(line) for line in seen.read_text().split()]
    print(f"30 s together: {batches} batches, {len(seqs)} events moved")
    assert batches > 100
    assert len(seqs) == len(set(seqs)), "duplicates"
    assert sorted(seqs) == list(range(batches * 200)), "lost or extra events"
    status = read_status(tmp_path, "mqtt")
    assert (status.ready, status.in_flight) == (0, 0)


def test_meta_is_committed_with_its_batch(tmp_path):
    producer = Producer(tmp_path, "ha", 2**40)
    producer.append([{"seq": 1}], meta={"newest": "2026-11-27T15:57:48.944094+00:00"})
    reopened = Producer(tmp_path, "ha", 2**40)
    assert reopened.get_meta("newest") == "2026-11-27T15:57:48.944094+00:00"
    batches = Consumer(tmp_path, "ha").take(10)
    assert [e["seq"] for b in batches for e in b.events] == [1]


def test_meta_keys_are_read_by_prefix_and_deleted_with_a_batch(tmp_path):
    producer = Producer(tmp_path, "mqtt", 2**40)
    producer.append([{"seq": 1}], meta={"r/a": "1", "r/b/c": "2", "r0": "x", "r": "y",
                                        "r/ä☃": "3"})
    producer.append([{"seq": 2}], meta={"r/a": None, "r/d": "4"})   # None: delete
    reopened = Producer(tmp_path, "mqtt", 2**40)
    assert reopened.meta_items("r/") == {"r/b/c": "2", "r/d": "4", "r/ä☃": "3"}
    assert reopened.get_meta("r/a") is None and reopened.get_meta("r0") == "x"


def test_items_given_back_are_taken_again_before_newer_ones(tmp_path):
    producer = Producer(tmp_path, "mqtt", 2**40)
    for batch in range(4):
        producer.append([{"seq": batch}])
    consumer = Consumer(tmp_path, "mqtt")
    first = consumer.take(2)
    consumer.nack([b.item_id for b in first])          # a graceful stop before the write
    again = consumer.take(10)
    assert [b.events[0]["seq"] for b in again] == [0, 1, 2, 3]
    consumer.ack(b.item_id for b in again)
    producer.append([{"seq": 4}])                      # appended after the consumer's cursor
    assert [b.events[0]["seq"] for b in consumer.take(10)] == [4]
