"""Where the writer converts: in its own thread or in its converter process, the same lines, the
same dead letters; and a converter process that dies stops the writer, which loses nothing."""

from __future__ import annotations

import os
import re
import signal
import sqlite3

import pytest

from ha_ingestor import queue
from ha_ingestor.config.schema import build_schema
from tests.chaos.procfs import children
from tests.support.fixtures_influx import mixed_events
from tests.support.procs import stop_process, tail, wait_until
from writer.conversion import InlineConversion, ProcessConversion
from writer.convert import Converter
from writer.loop import Round

SCHEMA = build_schema({"mqtt": {"presets": ["zigbee2mqtt"]}})
DB = "home"


def no_mark(source: str, item_id: int, deaths: int) -> None:
    """The crash guard's record is not part of this comparison."""


def converted(conversion, items) -> Round:
    batch = Round()
    for source, item in items:
        conversion.add(batch, source, item, 0)
    conversion.finish(batch)
    return batch


def test_the_converter_process_gives_the_lines_of_the_inline_path(tmp_path):
    events = mixed_events(3000, 1_767_225_600_000_000_000)
    events[10] = {"src": "mqtt", "rx": 1, "topic": "bad", "qos": 0, "retain": False,
                  "p": "//", "pe": "b64"}                        # not base64: a dead letter
    producer = queue.Producer(tmp_path, "mqtt", 2**30)
    for start in range(0, 3000, 500):
        producer.append(events[start:start + 500])
    consumer = queue.Consumer(tmp_path, "mqtt")
    items = [("mqtt", item) for item in consumer.take(10_000)]

    inline = converted(InlineConversion(Converter(SCHEMA), no_mark), items)
    process = ProcessConversion(SCHEMA, no_mark)
    try:
        separate = converted(process, items)
        again = converted(process, items[:2])                      # the process carries on
    finally:
        process.close()
    assert len(inline.lines) == 2999 and len(inline.dead["mqtt"]) == 1
    assert (separate.lines, separate.owners, separate.dead, separate.dead_kinds) == \
        (inline.lines, inline.owners, inline.dead, inline.dead_kinds)
    assert again.lines == inline.lines[:len(again.lines)]


def test_a_converter_process_that_dies_stops_the_writer_and_nothing_is_lost(influxdb, ingestor):
    influxdb.create_database(DB)
    ing = ingestor({"influxdb": {"url": influxdb.url, "database": DB, "batch_size": 2000,
                                 "converter_process": "yes"},
                    "schema": {"mqtt": {"presets": ["zigbee2mqtt"]}}})
    events = mixed_events(200_000, 1_767_225_600_000_000_000)
    for source in ("ha", "mqtt"):
        producer = queue.Producer(ing.queue_dir, source, 2**31)
        part = [e for e in events if e["src"] == source]
        for start in range(0, len(part), 1000):
            producer.append(part[start:start + 1000])
        producer.close()

    writer = ing.start("write", log="writer")
    wait_until(lambda: influxdb.points_fast(DB) > 0 and children(writer.pid), 60,
               "writing with a converter process")
    os.kill(children(writer.pid)[0], signal.SIGKILL)
    assert writer.wait(30) == 1, tail(ing.log_path("writer"))
    assert re.search(r"the converter process \(pid \d+\) stopped \(exit code -9\)",
                     ing.log_path("writer").read_text())

    writer = ing.start("write", log="writer-2")
    wait_until(lambda: sum(s.ready + s.in_flight for s in (
        queue.read_status(ing.queue_dir, src) for src in ("ha", "mqtt"))) == 0, 120, "drained")
    assert influxdb.points_fast(DB) == 200_000
    assert stop_process(writer) == 0


@pytest.mark.parametrize("converter_process", ["no", "yes"])
def test_an_item_whose_bytes_cannot_be_decoded_is_a_dead_letter_not_a_stop(influxdb, ingestor,
                                                                           converter_process):
    """A damaged queue file: one item's stored bytes are no longer JSON. Its bytes become one
    dead letter with the reason; every other item is written; the writer keeps running."""
    influxdb.create_database(DB)
    ing = ingestor({"influxdb": {"url": influxdb.url, "database": DB, "flush_interval": "100ms",
                                 "converter_process": converter_process},
                    "schema": {"mqtt": {"presets": ["zigbee2mqtt"]}}})
    events = [e for e in mixed_events(900, 1_767_225_600_000_000_000) if e["src"] == "mqtt"]
    producer = queue.Producer(ing.queue_dir, "mqtt", 2**30)
    ids = [producer.append(events[start:start + 100]) for start in range(0, 300, 100)]
    producer.close()
    conn = sqlite3.connect(ing.queue_dir / "mqtt.db")
    with conn:
        conn.execute("UPDATE batch_data SET data = ? WHERE _id = ?", (b'{"n":100,"ev\x00', ids[1]))
    conn.close()

    writer = ing.start("write", log="writer")
    wait_until(lambda: queue.read_status(ing.queue_dir, "mqtt").dead == 1, 60,
               "the damaged item kept as a dead letter")
    wait_until(lambda: influxdb.points_fast(DB) == 200, 60, "the other items written")
    [letter] = queue.list_dead(ing.queue_dir, "mqtt")
    assert letter.event == {"item": ids[1], "unreadable": '{"n":100,"ev\x00'}
    assert letter.reason.startswith("unreadable item: the stored item cannot be decoded: ")
    status = queue.read_status(ing.queue_dir, "mqtt")
    assert status.ready + status.in_flight == 0
    assert writer.poll() is None, tail(ing.log_path("writer"))
    assert stop_process(writer) == 0
