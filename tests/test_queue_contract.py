"""The durable queue's contract, run against its interface (Producer, Consumer and the repair
functions), each scenario with real processes on one queue file."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ha_ingestor import queue
from ha_ingestor.errors import NoSuchItem, QueueError, QueueFull, UnreadableItem
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


def test_a_second_consumer_process_is_refused_naming_the_first(tmp_path):
    Producer(tmp_path, "mqtt", 2**40).append([{"seq": 0}])
    proc = spawn("consume", str(tmp_path), str(tmp_path / "seen.txt"), "--hold")
    read_line(proc, "took")
    with pytest.raises(QueueError, match=rf"mqtt.db is already used by the writer \(pid {proc.pid}\)"):
        Consumer(tmp_path, "mqtt")
    assert read_status(tmp_path, "mqtt").in_flight == 1      # not handed back by the attempt
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert [b.events for b in Consumer(tmp_path, "mqtt").take(10)] == [[{"seq": 0}]]


def test_an_item_moves_to_the_dead_letters_whole_taken_or_ready(tmp_path):
    producer = Producer(tmp_path, "mqtt", 2**40)
    taken_id = producer.append([{"seq": i} for i in range(3)])
    ready_id = producer.append([{"seq": 3}, {"seq": 4}])
    producer.append([{"seq": 5}])
    consumer = Consumer(tmp_path, "mqtt")
    assert [b.item_id for b in consumer.take(1)] == [taken_id]

    assert consumer.dead_letter_item(taken_id, "crashed the writer 3 times") == 3
    assert queue.dead_letter_item(tmp_path, "mqtt", ready_id, "moved aside by hand") == 2
    with pytest.raises(NoSuchItem, match=f"no item {ready_id} waiting"):
        queue.dead_letter_item(tmp_path, "mqtt", ready_id, "again")
    with pytest.raises(NoSuchItem, match="no item 999 waiting"):
        consumer.dead_letter_item(999, "no such item")
    letters = queue.list_dead(tmp_path, "mqtt")
    assert [(d.event["seq"], d.reason) for d in letters] == [
        (0, "crashed the writer 3 times"), (1, "crashed the writer 3 times"),
        (2, "crashed the writer 3 times"), (3, "moved aside by hand"), (4, "moved aside by hand")]
    status = read_status(tmp_path, "mqtt")
    assert (status.ready, status.in_flight, status.dead) == (1, 0, 5)
    assert [b.events for b in consumer.take(10)] == [[{"seq": 5}]]


def test_an_item_purged_while_in_flight_is_gone_not_an_error(tmp_path):
    Producer(tmp_path, "mqtt", 2**40).append([{"seq": 0}])
    consumer = Consumer(tmp_path, "mqtt")
    [batch] = consumer.take(10)
    assert queue.purge(tmp_path, "mqtt") == 1                 # an operator, meanwhile
    assert consumer.events_of(batch.item_id) is None
    consumer.ack([batch.item_id], [({"seq": 0}, "rejected")])  # the writer finishing its round
    status = read_status(tmp_path, "mqtt")
    assert (status.ready, status.in_flight, status.dead) == (0, 0, 1)


def store_dead_letters(queue_dir: Path, count: int) -> None:
    consumer = Consumer(queue_dir, "mqtt")
    consumer.dead_letter(({"seq": i, "pad": "x" * 200}, "rejected") for i in range(count))
    consumer.close()


def test_requeue_dead_killed_at_any_point_never_doubles_nor_loses_a_letter(tmp_path):
    store_dead_letters(tmp_path / "timing", 20_000)
    proc = spawn("requeue", str(tmp_path / "timing"))
    read_line(proc, "requeueing")
    began = time.monotonic()
    read_line(proc, "requeued")
    duration = time.monotonic() - began

    store_dead_letters(tmp_path, 20_000)
    for fraction in (0.1, 0.3, 0.5, 0.7, 0.9, None):
        proc = spawn("requeue", str(tmp_path))
        read_line(proc, "requeueing")
        if fraction is None:
            read_line(proc, "requeued")
        else:
            time.sleep(fraction * duration)
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        queued = [e["seq"] for e in queue.peek(tmp_path, "mqtt", limit=10**6)]
        dead = [d.event["seq"] for d in queue.list_dead(tmp_path, "mqtt")]
        assert sorted(queued + dead) == list(range(20_000)), f"killed at {fraction}"
        assert not queued or not dead, "requeued and still dead at once"
    assert len(queued) == 20_000


def test_a_persist_queue_without_what_the_backend_uses_is_refused_naming_it(tmp_path,
                                                                            monkeypatch):
    """A persist-queue release that changed the internals BatchQueue extends (simulated by
    removing one from the installed class): a clear error and exit 4, never a silent change of
    how items are taken and acknowledged."""
    from ha_ingestor.queue import sqlite_backend
    monkeypatch.delattr(sqlite_backend.SQLiteAckQueue, "_mark_ack_status")
    with pytest.raises(QueueError, match=r"persist-queue \d+\.\d+\.\d+ is not the version this "
                                         r"release was built for \(1\.1\): it lacks "
                                         r"_mark_ack_status") as refused:
        Producer(tmp_path, "mqtt", 2**30)
    assert refused.value.exit_code == 4


def test_a_full_file_drained_in_one_burst_takes_as_much_again(tmp_path, monkeypatch):
    """An ack deletes the item in its own transaction: a file filled to ``max_bytes`` and
    drained by one take and one ack (the first release cleared acknowledged rows only every
    second or every 50 acks, so such a file stayed full of acknowledged rows for good) has its
    room back at once, every time."""
    monkeypatch.setattr("ha_ingestor.queue.FULL_RECHECK_S", 0.0)
    producer = Producer(tmp_path, "mqtt", max_bytes=6_000_000)
    batch = [{"src": "mqtt", "topic": "t", "p": "x" * 1000, "seq": i} for i in range(100)]

    def fill() -> int:
        appended = 0
        with pytest.raises(QueueFull, match="queue is full"):
            while appended < 1000:
                producer.append(batch)
                appended += 1
        return appended

    consumer = Consumer(tmp_path, "mqtt")
    first = fill()
    assert first >= 20
    for _round in range(3):
        taken = consumer.take(10**6)
        consumer.ack([b.item_id for b in taken])              # one burst, one ack
        status = read_status(tmp_path, "mqtt")
        assert (status.ready, status.in_flight) == (0, 0)
        assert not producer.is_full()
        assert fill() >= first - 1


def damage(path: Path, item_id: int, data: bytes) -> None:
    """Overwrite one item's stored bytes, as a damaged disk would."""
    conn = sqlite3.connect(path)
    with conn:
        assert conn.execute("UPDATE batch_data SET data = ? WHERE _id = ?",
                            (data, item_id)).rowcount == 1
    conn.close()


def test_an_item_whose_bytes_cannot_be_decoded_is_kept_as_a_dead_letter(tmp_path):
    producer = Producer(tmp_path, "mqtt", 2**30)
    ids = [producer.append([{"seq": 2 * i}, {"seq": 2 * i + 1}]) for i in range(3)]
    producer.close()
    damage(tmp_path / "mqtt.db", ids[1], b'{"n":2,"events":[{"seq":2},{"se\xff')
    consumer = Consumer(tmp_path, "mqtt")
    taken = consumer.take(100)
    assert [b.item_id for b in taken] == ids and [b.count for b in taken] == [2, 2, 2]
    with pytest.raises(UnreadableItem, match="the stored item cannot be decoded"):
        taken[1].events
    unreadable = {"item": ids[1], "unreadable": '{"n":2,"events":[{"seq":2},{"se\ufffd'}
    assert queue.peek(tmp_path, "mqtt") == [{"seq": 0}, {"seq": 1}, unreadable,
                                           {"seq": 4}, {"seq": 5}]
    assert consumer.dead_letter_item(ids[1], "moved aside") == 1
    [letter] = queue.list_dead(tmp_path, "mqtt")
    assert letter.event == unreadable
    assert letter.reason.startswith("moved aside (the stored item cannot be decoded: ")
    consumer.ack([ids[0], ids[2]])
    assert read_status(tmp_path, "mqtt").ready + read_status(tmp_path, "mqtt").in_flight == 0
    consumer.close()


def test_an_ack_writes_a_few_pages_not_the_data_it_frees(tmp_path):
    """What lets the writer acknowledge on a full disk: an ack's commit needs a few pages of the
    write-ahead log, not as many as the items it deletes (SQLite as Debian builds it zeroes every
    freed page, which wrote 10 MB to the log for 10 MB acknowledged, more than the headroom)."""
    producer = Producer(tmp_path, "mqtt", 2**30)        # checkpoints every 16 MiB: none here
    for _ in range(10):
        producer.append([{"src": "mqtt", "p": "x" * 2000, "n": i} for i in range(500)])
    consumer = Consumer(tmp_path, "mqtt")
    taken = consumer.take(10**6)
    wal = tmp_path / "mqtt.db-wal"
    conn = sqlite3.connect(tmp_path / "mqtt.db")
    assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    assert wal.stat().st_size == 0
    consumer.ack([b.item_id for b in taken])            # about 10 MB of items deleted
    assert read_status(tmp_path, "mqtt").ready == 0
    assert wal.stat().st_size < 2 * 2**20, wal.stat().st_size
    conn.close()
    consumer.close()
    producer.close()
