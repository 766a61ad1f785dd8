"""Catch-up on a big Home Assistant: the backfill and the resync never cost a live event.

A real HA (each tested release: 2024.3.3, 2025.4.4) with 5 010 entities fires a steady 100 state
changes/s (tests/support/ha_load.py: every change's ``time_fired`` comes from HA's own answer)
while ``ha-ingestor write`` runs into a real InfluxDB. The collector is SIGKILLed, or stopped with
SIGTERM, and started again after a gap. Every state change HA fired must then be in InfluxDB
exactly once (the set of points equals the set of changes, nothing missing, nothing extra); and a
full queue during the catch-up drops live events only while it is full, and every dropped state
change comes back from HA's recorder.

Gap and hand-off size: ``make test`` uses a 30 s gap and ``homeassistant.handoff_max_events`` 1000
(the minimum): the catch-up (3 000 backfilled changes and 5 010 resync states) is eight times the
hand-off, so a collector that pushes it through the hand-off in one burst drops live events here.
``make catchup`` runs the full-length version: ``HA_CATCHUP_GAP_S=240`` (24 000 backfilled
changes) with the default hand-off of 10 000, as an administrator would run it.
"""

from __future__ import annotations

import os
import re
import time
from datetime import datetime

import pytest

from tests.support.fixtures_homeassistant import (BIG_HA_ENTITIES, collector_overrides, metric,
                                                  scrape)
from tests.support.ha_load import UNIT, StateLoad, load_entity_ids
from tests.support.procs import kill_process, stop_process, tail, wait_until

pytestmark = [pytest.mark.realha, pytest.mark.slow, pytest.mark.timeout(1800)]

DB = "home"
RATE = 100.0                                                   # state changes per second
GAP_S = float(os.environ.get("HA_CATCHUP_GAP_S", "30"))
HANDOFF = int(os.environ.get("HA_CATCHUP_HANDOFF", "1000"))


def pipeline(ing_factory, ha, influx, name: str, **ha_settings):
    influx.create_database(DB)
    overrides = collector_overrides(ha.ws_url, ha.token, backfill_margin="3s",
                                    ping_interval="10s", ping_timeout="10s",
                                    handoff_max_events=HANDOFF, **ha_settings)
    overrides["influxdb"] = {"api": "v1", "url": influx.url, "database": DB,
                             "flush_interval": "200ms"}
    return ing_factory(overrides, name=name)


def start_collector(ing, catch_ups: int):
    """Start ``collect ha`` and wait for its ``catch_ups``-th catch-up (counted over the log)."""
    proc = ing.start("collect", "ha", log="ha")
    ing.wait_caught_up(catch_ups, timeout=GAP_S + 180)
    return proc


def points(influx, since_ns: int) -> set[tuple[str, int]]:
    """(entity_id, time in ns) of every point the load's sensors have in InfluxDB since then."""
    result = influx._raw_query(f'SELECT "value" FROM "{UNIT}" WHERE time >= {since_ns} '
                               f'GROUP BY "entity_id"', DB)
    statement = result["results"][0]
    assert not statement.get("partial"), "InfluxDB truncated the answer"
    found = set()
    for series in statement.get("series", []):
        entity_id = "sensor." + series["tags"]["entity_id"]
        found.update((entity_id, row[0]) for row in series["values"])
    return found


def as_ns(fired: list[tuple[str, str]]) -> set[tuple[str, int]]:
    return {(entity_id, _ns(stamp)) for entity_id, stamp in fired}


def _ns(stamp: str) -> int:
    moment = datetime.fromisoformat(stamp)
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


def assert_in_influx_exactly(influx, fired: list[tuple[str, str]], ing) -> None:
    """Every fired change is one point; no point at a time HA never fired (the writer drains)."""
    wanted = as_ns(fired)
    assert len(wanted) == len(fired), "the load fired two changes with one key"
    since = min(ns for _, ns in wanted)
    try:
        wait_until(lambda: wanted <= points(influx, since), 180, "every change in InfluxDB",
                   interval=2)
    except TimeoutError:
        missing = wanted - points(influx, since)
        pytest.fail(f"{len(missing)} of {len(wanted)} state changes are not in InfluxDB, e.g. "
                    f"{sorted(missing)[:3]}\n{tail(ing.log_path('ha'), 30)}")
    extra = points(influx, since) - wanted
    assert not extra, f"{len(extra)} points at times HA never fired, e.g. {sorted(extra)[:3]}"


def drop_lines(ing) -> list[str]:
    return [line for line in ing.log_path("ha").read_text().splitlines()
            if re.search(r"\bdropped \d+ events", line)]


def test_sigkill_and_sigterm_restarts_lose_no_live_event(big_real_ha, influxdb, ingestor):
    ing = pipeline(ingestor, big_real_ha, influxdb, "restarts")
    writer = ing.start("write", log="writer")
    load = StateLoad(big_real_ha, load_entity_ids(BIG_HA_ENTITIES), rate=RATE).start()
    collector = start_collector(ing, 1)
    time.sleep(5)

    kill_process(collector)                       # 1. SIGKILL, restarted after the gap
    time.sleep(GAP_S)
    collector = start_collector(ing, 2)
    time.sleep(10)

    assert stop_process(collector, timeout=60) == 0   # 2. SIGTERM, restarted after the gap
    time.sleep(GAP_S)
    collector = start_collector(ing, 3)
    time.sleep(10)

    fired = load.stop()
    print(f"HA fired {len(fired)} state changes at {load.achieved_rate():.1f}/s; gaps of "
          f"{GAP_S:.0f} s; hand-off {HANDOFF}")
    assert len(fired) >= RATE * (2 * GAP_S + 25) * 0.9, "the load did not keep its rate"
    assert_in_influx_exactly(influxdb, fired, ing)
    assert drop_lines(ing) == [], "live events were dropped"
    log_text = ing.log_path("ha").read_text()
    assert log_text.count("backfilled") >= 2 and "dropped" not in log_text
    assert stop_process(collector, timeout=60) == 0
    assert stop_process(writer, timeout=60) == 0


def test_queue_full_during_catch_up_drops_only_while_full_and_restores_them(
        big_real_ha, influxdb, ingestor):
    ing = pipeline(ingestor, big_real_ha, influxdb, "small-queue")
    # 4 MiB: about 5 000 catch-up events here. The writer acknowledges every 2 s at most: the
    # queue deletes acknowledged rows only in an acknowledgement at least 1 s after the last
    # deletion, so a full file whose last rows were all acknowledged sooner stays "full" of
    # them and nothing new is appended to acknowledge (a queue matter, not the collector's).
    ing.write_config({"queue": {"max_bytes": "4MiB"},
                      "influxdb": {"batch_size": 1_000_000, "flush_interval": "2s"}})
    writer = ing.start("write", log="writer")
    load = StateLoad(big_real_ha, load_entity_ids(BIG_HA_ENTITIES), rate=RATE).start()
    collector = start_collector(ing, 1)
    time.sleep(5)

    kill_process(collector)
    time.sleep(GAP_S)
    influxdb.stop()               # the writer cannot make room: the catch-up fills the queue
    collector = ing.start("collect", "ha", log="ha")
    port = ing.config["metrics"]["ports"]["ha"]
    try:
        wait_until(lambda: drop_lines(ing), HANDOFF / RATE + 120,   # the hand-off fills first
                   "live events dropped while the queue is full", interval=0.5)
    except TimeoutError as exc:
        pytest.fail(f"{exc}\n{tail(ing.log_path('ha'), 30)}")
    time.sleep(5)
    full = scrape(port)
    assert metric(full, "ha_ingestor_queue_full", source="ha") == 1
    influxdb.start()              # the writer drains, the queue has room again
    ing.wait_caught_up(2, timeout=240)
    time.sleep(10)

    fired = load.stop()
    print(f"HA fired {len(fired)} state changes at {load.achieved_rate():.1f}/s")
    assert_in_influx_exactly(influxdb, fired, ing)
    samples = scrape(port)
    dropped = metric(samples, "ha_ingestor_events_dropped_total", source="ha",
                     reason="drop_newest")
    restored = metric(samples, "ha_ingestor_ha_restored_total")
    lost = metric(samples, "ha_ingestor_ha_lost_events_total")
    print(f"dropped {dropped:.0f} live events while the queue was full, restored {restored:.0f} "
          f"state changes from the recorder, lost {lost:.0f} other events")
    lines = drop_lines(ing)
    assert dropped > 0 and lines
    assert all("while the queue was full" in line and "had room" not in line
               for line in lines), lines
    assert restored + lost == dropped
    assert stop_process(collector, timeout=60) == 0
    assert stop_process(writer, timeout=60) == 0
