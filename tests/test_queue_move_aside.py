"""The queue keeps what JSON can carry, and one item can be moved to the dead-letter store.

- A lone surrogate (``"\\ud800"``, valid JSON, not valid Unicode) used to crash
  ``Producer.append`` (orjson refuses it, the fallback could not encode it as UTF-8) and with it
  the HA collector's committer: it is stored and read back unchanged.
- ``Consumer.dead_letter_item`` (the writer's move-aside) and ``queue.dead_letter_item`` (the
  ``queue dead-letter-item`` command) move every event of one item, ready or taken, with the
  reason, in one transaction.
"""

from __future__ import annotations

import pytest

from ha_ingestor import queue
from ha_ingestor.errors import NoSuchItem


def test_lone_surrogates_and_huge_integers_round_trip(tmp_path):
    events = [{"src": "ha", "event": {"data": {"a": "\ud800", "b": "x\udfffy", "c": 10**40}}},
              {"src": "ha", "event": {"data": {"k\ud83d": ["\ud800", 1]}}}]
    producer = queue.Producer(tmp_path, "ha", 2**30)
    producer.append(events)
    producer.close()
    consumer = queue.Consumer(tmp_path, "ha")
    taken = consumer.take(10)
    assert [b.events for b in taken] == [events]
    assert queue.peek(tmp_path, "ha") == events
    consumer.ack([taken[0].item_id], [(events[0], "kept")])
    assert queue.list_dead(tmp_path, "ha")[0].event == events[0]
    consumer.close()


def fill(tmp_path, items):
    producer = queue.Producer(tmp_path, "mqtt", 2**30)
    ids = [producer.append([{"src": "mqtt", "n": f"{i}.{j}"} for j in range(size)])
           for i, size in enumerate(items)]
    producer.close()
    return ids


def test_consumer_moves_a_taken_item_aside_and_the_rest_stays(tmp_path):
    ids = fill(tmp_path, [3, 2, 4])
    consumer = queue.Consumer(tmp_path, "mqtt")
    first = consumer.take(1)[0]
    assert consumer.dead_letter_item(first.item_id, "killed the writer 3 times") == 3
    assert [d.event["n"] for d in queue.list_dead(tmp_path, "mqtt")] == ["0.0", "0.1", "0.2"]
    assert {d.reason for d in queue.list_dead(tmp_path, "mqtt")} == {"killed the writer 3 times"}
    assert queue.read_status(tmp_path, "mqtt").ready == 6
    assert consumer.dead_letter_item(ids[2], "ready, not taken") == 4   # ready items too
    assert [b.item_id for b in consumer.take(100)] == [ids[1]]
    with pytest.raises(NoSuchItem, match=f"no item {ids[0]}"):
        consumer.dead_letter_item(ids[0], "again")
    consumer.close()


def test_repair_function_for_the_cli(tmp_path):
    ids = fill(tmp_path, [2, 5])
    assert queue.dead_letter_item(tmp_path, "mqtt", ids[1], "operator") == 5
    status = queue.read_status(tmp_path, "mqtt")
    assert (status.ready, status.dead) == (2, 5)
    with pytest.raises(NoSuchItem):
        queue.dead_letter_item(tmp_path, "mqtt", 999, "operator")
    assert NoSuchItem.exit_code == 2
