"""Parity with Home Assistant itself, on every tested release: a real HA writes its state changes
with its own ``influxdb`` integration (configured in YAML) into one database; the same events,
taken from HA's WebSocket API, go through the queue and ``ha-ingestor write`` into another
database on the same InfluxDB 1.6.7.
For every state_changed event both databases must hold the same measurement, tags, fields and
time.
"""

from __future__ import annotations

import time

import pytest

from ha_ingestor import queue
from ha_ingestor.envelope import ha_event
from tests.support.fixtures_homeassistant import ha_venv_or_skip
from tests.support.procs import stop_process, tail, wait_until
from tests.support.real_ha import HomeAssistantServer

pytestmark = [pytest.mark.slow, pytest.mark.realha]

# The same options on both sides: HA's influxdb: section and our schema.state_changed.
OPTIONS = {
    "tags": {"source": "ha"},
    "ignore_attributes": ["icon"],
    "component_config": {"sensor.acc_temperature_average": {"override_measurement": "average"}},
    "component_config_domain": {"counter": {"ignore_attributes": ["initial"]}},
}


def ha_yaml(port: int) -> str:
    return f"""
influxdb:
  host: 127.0.0.1
  port: {port}
  database: ha_own
  api_version: 1
  tags:
    source: ha
  ignore_attributes: [icon]
  component_config:
    sensor.acc_temperature_average:
      override_measurement: average
  component_config_domain:
    counter:
      ignore_attributes: [initial]
"""


def drive(client) -> None:
    """State changes of every helper kind, including text that needs escaping and the
    automation (its last_triggered attribute is a datetime inside HA)."""
    calls = [("input_boolean", "toggle", "input_boolean.acc_switch_1", {}),
             ("input_number", "set_value", "input_number.acc_temp_1", {"value": 21.5}),
             ("input_number", "set_value", "input_number.acc_temp_2", {"value": -3.25}),
             ("input_number", "set_value", "input_number.acc_humidity", {"value": 55}),
             ("input_text", "set_value", "input_text.acc_note",
              {"value": 'a, b = "c" \\ d'}),
             ("input_select", "select_option", "input_select.acc_mode", {"option": "away"}),
             ("counter", "increment", "counter.acc_counter", {}),
             ("input_boolean", "turn_on", "input_boolean.acc_switch_2", {}),
             ("input_boolean", "toggle", "input_boolean.acc_switch_1", {})]
    for round_ in range(3):
        for domain, service, entity_id, data in calls:
            if service == "set_value" and domain == "input_number":
                data = {"value": data["value"] + round_}
            client.call_service(domain, service, data, target={"entity_id": entity_id})
            time.sleep(0.02)       # distinct time_fired per entity


def collect(client, quiet_s: float = 3.0) -> list[dict]:
    events = []
    while (event := client.recv_event(timeout=quiet_s)) is not None:
        events.append(event)
    return events


def rows(influxdb, db: str) -> set[tuple]:
    """Every point as (measurement, tags, time, fields), comparable across databases."""
    found = set()
    for measurement in [r["name"] for r in influxdb.query("SHOW MEASUREMENTS", db)]:
        escaped = measurement.replace('"', '\\"')
        result = influxdb._raw_query(f'SELECT * FROM "{escaped}" GROUP BY *', db)
        for series in result["results"][0].get("series", []):
            tags = tuple(sorted((series.get("tags") or {}).items()))
            for values in series["values"]:
                record = dict(zip(series["columns"], values))
                stamp = record.pop("time")
                fields = tuple(sorted((k, v) for k, v in record.items() if v is not None))
                found.add((measurement, tags, stamp, fields))
    return found


def test_points_match_home_assistants_own_influxdb_integration(tmp_path, influxdb, ingestor,
                                                               ha_version):
    influxdb.create_database("ha_own")
    influxdb.create_database("ours")
    ha_venv_or_skip(ha_version, ("influxdb",))
    ha = HomeAssistantServer(tmp_path / "ha", extra_yaml=ha_yaml(influxdb.port),
                             version=ha_version).start()
    try:
        with ha.client() as client:
            client.subscribe_events("state_changed")
            drive(client)
            events = collect(client)
    finally:
        ha.stop()          # HA flushes its integration's queue on stop
    assert len(events) >= 27, f"only {len(events)} state changes seen"

    ing = ingestor({"influxdb": {"url": influxdb.url, "database": "ours",
                                 "flush_interval": "100ms"},
                    "schema": {"state_changed": OPTIONS}})
    producer = queue.Producer(ing.queue_dir, "ha", 2**30)
    producer.append([ha_event(e) for e in events])
    producer.close()
    writer = ing.start("write", log="writer")
    wait_until(lambda: queue.read_status(ing.queue_dir, "ha").ready == 0
               and queue.read_status(ing.queue_dir, "ha").in_flight == 0, 60, "queue drained")
    assert stop_process(writer) == 0
    assert queue.read_status(ing.queue_dir, "ha").dead == 0, tail(ing.log_path("writer"))

    ours = rows(influxdb, "ours")
    first, last = min(p[2] for p in ours), max(p[2] for p in ours)
    theirs = {p for p in rows(influxdb, "ha_own") if first <= p[2] <= last}
    assert len(ours) == len(events)
    print(f"{len(events)} state changes, {len(ours)} points, {len(theirs)} from HA, "
          f"measurements {sorted({p[0] for p in ours})}")
    missing, extra = theirs - ours, ours - theirs
    assert not missing and not extra, (
        "differences:\n  only HA wrote: " + "\n    ".join(map(str, sorted(missing)[:5]))
        + "\n  only we wrote: " + "\n    ".join(map(str, sorted(extra)[:5])))
    measurements = {p[0] for p in ours}
    assert {"°C", "%", "average", "input_boolean.acc_switch_1", "counter.acc_counter",
            "automation.acc_switch_1_counts"} <= measurements
