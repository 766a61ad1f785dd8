"""A queue item that kills the writer is moved aside after ``queue.move_aside_after`` deaths in a
row; a writer killed while it waits for InfluxDB never counts against an item.

The crash is injected through a test-only hook (tests/support/crash_hook/sitecustomize.py): the
process converting one event sends itself SIGSEGV, as a crash in a C library would: the writer
itself (``influxdb.converter_process: no``), or its converter process, after which the writer
exits 1 naming it.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from ha_ingestor import queue
from ha_ingestor.envelope import mqtt_event
from tests.support.procs import kill_process, stop_process, tail, wait_until

pytestmark = pytest.mark.slow

DB = "home"
HOOK = str(Path(__file__).parent / "support" / "crash_hook")
POISON = "dev/poison"


def items(start_ns: int) -> list[list[dict]]:
    """Three items of 50 events; the middle one holds the event that kills the writer."""
    def event(n: int, topic: str = "dev/ok") -> dict:
        return mqtt_event(topic, str(n).encode(), 1, False, start_ns + n * 1000)
    middle = [event(n) for n in range(50, 100)]
    middle[20] = event(70, POISON)
    return [[event(n) for n in range(50)], middle, [event(n) for n in range(100, 150)]]


def fill(queue_dir, batches) -> list[int]:
    producer = queue.Producer(queue_dir, "mqtt", 2**30)
    ids = [producer.append(batch) for batch in batches]
    producer.close()
    return ids


@pytest.mark.parametrize("converter_process", ["no", "yes"])
def test_an_item_that_crashes_the_writer_is_moved_aside_after_3_deaths(influxdb, ingestor,
                                                                        converter_process):
    influxdb.create_database(DB)
    ing = ingestor({"influxdb": {"url": influxdb.url, "database": DB, "flush_interval": "100ms",
                                 "converter_process": converter_process},
                    "run": {"restart_backoff_max": "1s"}})
    ids = fill(ing.queue_dir, items(time.time_ns() - 3600 * 10**9))
    supervisor = ing.start("run", log="run", env={"PYTHONPATH": HOOK,
                                                   "HA_INGESTOR_TEST_CRASH_ON": POISON})

    def drained() -> bool:
        status = queue.read_status(ing.queue_dir, "mqtt")
        return status.ready + status.in_flight == 0
    wait_until(drained, 90, "the queue drained past the item")
    assert influxdb.points(DB) == 100                  # the first and the last item
    log = ing.log_path("run").read_text()
    if converter_process == "no":
        assert log.count("writer exited with signal SIGSEGV") == 3, tail(ing.log_path("run"))
    else:
        assert len(re.findall(r"the converter process \(pid \d+\) stopped \(exit code -11\)",
                              log)) == 3, tail(ing.log_path("run"))
        assert log.count("writer exited with code 1") == 3, tail(ing.log_path("run"))
    assert f"item {ids[1]} of the mqtt queue killed the writer 3 times in a row" in log
    shown = ing.run("queue", "dead", "--json")
    letters = [json.loads(line) for line in shown.stdout.splitlines()]
    assert len(letters) == 50 and {d["event"]["topic"] for d in letters} == {"dev/ok", POISON}
    assert all(f"the writer died 3 times in a row while converting this item (mqtt queue "
               f"item {ids[1]}" in d["reason"] for d in letters)
    assert supervisor.poll() is None
    assert stop_process(supervisor, timeout=30) == 0


@pytest.mark.parametrize("converter_process", ["no", "yes"])
def test_writers_killed_while_influxdb_is_down_count_against_no_item(influxdb, ingestor,
                                                                      converter_process):
    influxdb.create_database(DB)
    ing = ingestor({"influxdb": {"url": influxdb.url, "database": DB, "flush_interval": "100ms",
                                 "converter_process": converter_process}})
    fill(ing.queue_dir, items(time.time_ns() - 3600 * 10**9)[::2])     # no poison
    influxdb.stop()
    for _ in range(4):               # more kills than queue.move_aside_after
        writer = ing.start("write", log="writer")
        wait_until(lambda: "InfluxDB write failed" in ing.log_path("writer").read_text(), 30,
                   "the writer waiting for InfluxDB")
        kill_process(writer)
        ing.log_path("writer").write_text("")
    influxdb.start()
    writer = ing.start("write", log="writer")
    wait_until(lambda: influxdb.points(DB) == 100, 60, "everything written")
    assert queue.read_status(ing.queue_dir, "mqtt").dead == 0, tail(ing.log_path("writer"))
    assert stop_process(writer) == 0
