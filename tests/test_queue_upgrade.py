"""Upgrading over a queue written by release 0.1.0 (queue format 1): the writer opens the files,
migrates them, and drains exactly what was not acknowledged; dead letters and meta survive, the
files become private.

The files in tests/data/queue-format-1/ were written by release 0.1.0's own queue module
(make_files.py there says how): one item acknowledged but not yet cleared, one taken and never
acknowledged (a writer killed mid-batch), the rest ready.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sqlite3
import stat
from pathlib import Path

from ha_ingestor import queue
from ha_ingestor.config.schema import build_schema
from tests.support.fixtures_influx import mixed_events
from tests.support.procs import stop_process, tail, wait_until
from writer.convert import Converter

DATA = Path(__file__).resolve().parent / "data" / "queue-format-1"
START_NS = 1_767_225_600_000_000_000         # as in make_files.py
SCHEMA = {"mqtt": {"presets": ["zigbee2mqtt"]}}
DB = "home"


def unpack_format_1_files(queue_dir: Path) -> None:
    """As release 0.1.0 left them under umask 022: directory 0755, files 0644."""
    queue_dir.mkdir(mode=0o755)
    os.chmod(queue_dir, 0o755)
    for source in ("mqtt", "ha"):
        with gzip.open(DATA / f"{source}.db.gz", "rb") as packed, \
                open(queue_dir / f"{source}.db", "wb") as raw:
            shutil.copyfileobj(packed, raw)
        os.chmod(queue_dir / f"{source}.db", 0o644)


def expected_lines() -> list[str]:
    """Every event but those of each file's first item (acknowledged before the upgrade)."""
    events = mixed_events(3000, START_NS)
    kept = []
    for source in ("mqtt", "ha"):
        kept += [e for e in events if e["src"] == source][500:]
    convert = Converter(build_schema(SCHEMA)).convert
    return [convert(e) for e in kept]


def test_a_queue_of_the_previous_release_opens_and_drains_after_the_upgrade(influxdb, ingestor):
    influxdb.create_database(DB)
    ing = ingestor({"influxdb": {"url": influxdb.url, "database": DB, "flush_interval": "100ms"},
                    "schema": SCHEMA})
    unpack_format_1_files(ing.queue_dir)

    writer = ing.start("write", log="writer")
    lines = expected_lines()
    wait_until(lambda: influxdb.points(DB) >= len(lines) or writer.poll() is not None, 60,
               "the backlog written")
    wait_until(lambda: queue.read_status(ing.queue_dir, "mqtt").in_flight == 0, 10, "acked")
    assert writer.poll() is None, tail(ing.log_path("writer"))
    assert influxdb.points(DB) == len(lines) == 2000       # nothing acknowledged came back
    status = json.loads(ing.run("queue", "status", "--json").stdout)["queues"]
    assert (status["mqtt"]["ready"], status["mqtt"]["in_flight"], status["mqtt"]["dead"]) \
        == (0, 0, 2)
    assert (status["ha"]["ready"], status["ha"]["dead"]) == (0, 0)
    dead = ing.run("queue", "dead", "--source", "mqtt").stdout
    assert "field type conflict" in dead and "malformed event" in dead

    # the collectors' durable state is still there; new items follow the old ones
    producer = queue.Producer(ing.queue_dir, "ha", 2**30)
    assert producer.get_meta("ha.newest_time_fired") == "2026-01-01T00:00:03+00:00"
    assert producer.append(mixed_events(10, START_NS + 10**12, sensors=1)[:1]) > 4
    producer.close()
    wait_until(lambda: influxdb.points(DB) == 2001, 30, "a new event written after the upgrade")
    assert stop_process(writer) == 0

    assert stat.S_IMODE(ing.queue_dir.stat().st_mode) == 0o700
    for name in os.listdir(ing.queue_dir):
        assert stat.S_IMODE((ing.queue_dir / name).stat().st_mode) == 0o600, name
    for source in ("mqtt", "ha"):
        with sqlite3.connect(ing.queue_dir / f"{source}.db") as conn:
            assert conn.execute("SELECT value FROM meta WHERE key = 'queue.format'"
                                ).fetchone() == ("2",)
            assert conn.execute("PRAGMA quick_check").fetchone() == ("ok",)
