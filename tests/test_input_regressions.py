"""Each input that used to stop the pipeline or land altered, as its own test.

One real InfluxDB 1.6.7 and one ``ha-ingestor write`` for the module. Every test queues the
input the way a collector does, between an ordinary event before and one after it, and checks
what a user would see: both neighbours written, the input stored as docs/schema.md says (or in
``queue dead`` with the reason), and the writer still running.
"""

from __future__ import annotations

import itertools
import time

import pytest

from ha_ingestor import queue
from ha_ingestor.envelope import ha_event, mqtt_event
from tests.support.fixtures_influx import InfluxServer, ha_state_event
from tests.support.fixtures_ingestor import IngestorHarness
from tests.support.influx_readback import read_points
from tests.support.procs import tail, wait_until

pytestmark = pytest.mark.slow

DB = "regressions"
_clock = itertools.count(time.time_ns() - 3600 * 10**9, 1_000_000)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("regressions")
    influx = InfluxServer(root / "influxdb").start()
    influx.create_database(DB)
    ing = IngestorHarness(root / "ing", {"influxdb": {"url": influx.url, "database": DB,
                                                      "flush_interval": "100ms"}})
    ing.workdir.mkdir(parents=True, exist_ok=True)
    ing.write_config()
    writer = ing.start("write", log="writer")
    yield influx, ing, writer
    ing.stop_all()
    influx.stop()


def mqtt(topic: str, payload: bytes) -> dict:
    return mqtt_event(topic, payload, 1, False, next(_clock))


def push(pipeline, source: str, bad: dict) -> tuple[dict, list[str]]:
    """Queue ``neighbour, bad, neighbour`` as one item; wait for both neighbours in InfluxDB.
    Returns the points and the dead-letter reasons that came from ``bad``."""
    influx, ing, writer = pipeline
    before, after = mqtt("fence/before", b"1"), mqtt("fence/after", b"2")
    dead_before = len(queue.list_dead(ing.queue_dir, source))
    producer = queue.Producer(ing.queue_dir, source, 2**30)
    producer.append([before, bad, after] if source == "mqtt" else [bad])
    producer.close()
    if source != "mqtt":
        producer = queue.Producer(ing.queue_dir, "mqtt", 2**30)
        producer.append([before, after])
        producer.close()
    fences = {before["rx"], after["rx"]}

    def fenced() -> bool:
        times = {t for (m, _tags, t) in read_points(influx, DB) if m == "mqtt"}
        return fences <= times
    try:
        wait_until(fenced, 60, "the events around the input", interval=0.2)
        if source != "mqtt":
            wait_until(lambda: queue.read_status(ing.queue_dir, source).ready +
                       queue.read_status(ing.queue_dir, source).in_flight == 0, 30, "drained")
    except TimeoutError:
        pytest.fail(tail(ing.log_path("writer")))
    assert writer.poll() is None, tail(ing.log_path("writer"))
    reasons = [d.reason for d in queue.list_dead(ing.queue_dir, source)[dead_before:]]
    return read_points(influx, DB), reasons


def point(points: dict, measurement: str, rx: int) -> tuple[dict, dict]:
    """(tags, fields) of the point at ``rx`` in ``measurement``."""
    found = [(dict(tags), fields) for (m, tags, t), fields in points.items()
             if m == measurement and t == rx]
    assert len(found) == 1, f"{len(found)} points in {measurement!r} at {rx}"
    return found[0]


def test_json_nested_5000_levels_is_a_dead_letter_and_the_writer_goes_on(pipeline):
    bad = mqtt("dev/deep", b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}")
    points, reasons = push(pipeline, "mqtt", bad)
    assert len(reasons) == 1 and "nested too deeply" in reasons[0]


def test_lone_surrogate_escape_in_a_payload_is_a_dead_letter_naming_it(pipeline):
    bad = mqtt("dev/surrogate", b'{"a": "\\ud800"}')
    points, reasons = push(pipeline, "mqtt", bad)
    assert len(reasons) == 1 and "not valid Unicode" in reasons[0] and "ud800" in reasons[0]


def test_field_name_ending_in_a_backslash_no_longer_swallows_the_next_field(pipeline):
    bad = mqtt("dev/swallow", b'{"g\\\\": 4, "q\\"q": 6}')
    points, reasons = push(pipeline, "mqtt", bad)
    assert reasons == []
    assert point(points, "mqtt", bad["rx"])[1] == {"g\\_": 4, 'q"q': 6}


def test_two_fields_never_merge_into_one(pipeline):
    bad = mqtt("dev/merged", b'{"k\\\\": 0.19, "temp": "\\\\"}')
    points, _ = push(pipeline, "mqtt", bad)
    assert point(points, "mqtt", bad["rx"])[1] == {"k\\_": 0.19, "temp_str": "\\"}


def test_topic_ending_in_a_backslash_is_stored_by_the_documented_rule(pipeline):
    bad = mqtt("dev/ends\\", b"5")
    points, reasons = push(pipeline, "mqtt", bad)
    assert reasons == []
    assert point(points, "mqtt", bad["rx"])[0]["topic"] == "dev/ends\\_"


def test_a_backslash_in_a_topic_is_stored_once_not_doubled(pipeline):
    bad = mqtt("sensors/back\\slash", b"21.5")
    points, _ = push(pipeline, "mqtt", bad)
    assert point(points, "mqtt", bad["rx"])[0]["topic"] == "sensors/back\\slash"


def test_a_field_called_time_is_stored_as_time_(pipeline):
    bad = mqtt("dev/clock", b'{"time": 1700000000, "t": 1}')
    points, _ = push(pipeline, "mqtt", bad)
    assert point(points, "mqtt", bad["rx"])[1] == {"time_": 1700000000, "t": 1}


def test_a_newline_in_a_string_comes_back_as_a_newline(pipeline):
    bad = mqtt("dev/text", b'{"s": "two\\nlines", "b": "back\\\\slash"}')
    points, _ = push(pipeline, "mqtt", bad)
    assert point(points, "mqtt", bad["rx"])[1] == {"s_str": "two\nlines",
                                                   "b_str": "back\\slash"}


def test_a_unit_starting_with_hash_is_not_read_as_a_comment(pipeline):
    event = ha_state_event("sensor.rate", "12", {"unit_of_measurement": "#/min"}, next(_clock))
    points, reasons = push(pipeline, "ha", event)
    assert reasons == []
    time_ns = _time_ns(event)
    assert point(points, "\\#/min", time_ns)[1] == {"value": 12}


def test_a_measurement_ending_in_a_backslash_keeps_its_tags(pipeline):
    event = ha_state_event("sensor.odd", "3", {"unit_of_measurement": "kW\\"}, next(_clock))
    points, _ = push(pipeline, "ha", event)
    tags, fields = point(points, "kW\\\\_", _time_ns(event))
    assert tags == {"domain": "sensor", "entity_id": "odd"} and fields == {"value": 3}


def test_state_changed_keeps_has_own_newline_and_backslash_spelling(pipeline):
    """HA's integration writes a newline as \\n and doubles backslashes: dashboards built on it
    keep working (docs/schema.md)."""
    event = ha_state_event("sensor.note", "two\nlines\\", {}, next(_clock))
    points, _ = push(pipeline, "ha", event)
    assert point(points, "sensor.note", _time_ns(event))[1] == {"state": "two\\nlines\\"}


def test_an_alarm_code_in_call_service_is_not_written(pipeline):
    stamp = ha_state_event("x.y", "1", {}, next(_clock))["event"]["time_fired"]
    event = ha_event({"event_type": "call_service", "time_fired": stamp, "origin": "LOCAL",
                      "context": {"id": "c1", "parent_id": None, "user_id": None},
                      "data": {"domain": "alarm_control_panel", "service": "alarm_disarm",
                               "service_data": {"entity_id": "alarm_control_panel.home",
                                                "code": "1234"}}})
    points, _ = push(pipeline, "ha", event)
    tags, fields = point(points, "ha_events", _time_ns(event))
    assert tags["service"] == "alarm_disarm"
    assert "1234" not in str(fields) and not any("code" in key for key in fields)


def _time_ns(envelope: dict) -> int:
    from writer.schema_ha import time_to_ns
    return time_to_ns(envelope["event"]["time_fired"])


# ---- through the collectors ---------------------------------------------------------------------

def test_lone_surrogate_in_a_home_assistant_frame_no_longer_stops_the_collector(
        ha_test_server, influxdb, ingestor):
    """The HA test server stands in for HA: a real HA's JSON encoder never writes a lone
    surrogate. The collector used to crash in Producer.append, losing its in-memory batch."""
    from tests.support.fixtures_homeassistant import collector_overrides
    influxdb.create_database(DB)
    ing = ingestor({**collector_overrides(ha_test_server.url, ha_test_server.token),
                    "influxdb": {"url": influxdb.url, "database": DB, "flush_interval": "100ms"}})
    collector, writer = ing.start("collect", "ha", log="ha"), ing.start("write", log="writer")
    ha_test_server.wait_for_subscribers(1, timeout=60)
    for name, data in (("before", {"n": 1}), ("bad", {"s": "\ud800", "n": 2}),
                       ("after", {"n": 3})):
        ha_test_server.fire_event(f"surrogate_{name}", data)
    wanted = {"surrogate_before", "surrogate_after"}
    wait_until(lambda: wanted <= {dict(tags).get("event_type") for (_m, tags, _t)
                                  in read_points(influxdb, DB)}, 60, "the events around it")
    wait_until(lambda: queue.read_status(ing.queue_dir, "ha").dead >= 1, 30, "a dead letter")
    letters = queue.list_dead(ing.queue_dir, "ha")
    assert [d.event["event"]["data"]["s"] for d in letters] == ["\ud800"]   # kept exactly
    assert "not valid Unicode" in letters[0].reason
    assert collector.poll() is None and writer.poll() is None, tail(ing.log_path("ha"))


@pytest.mark.realha
def test_alarm_disarm_with_a_code_leaves_no_code_in_influxdb(real_ha, influxdb, ingestor):
    """A real HA 2024.3.3 with a manual alarm panel (code 1234): arming and disarming call the
    service with the code, and HA's call_service events carry it in service_data."""
    from tests.support.fixtures_homeassistant import collector_overrides, metric, scrape
    influxdb.create_database(DB)
    ing = ingestor({**collector_overrides(real_ha.ws_url, real_ha.token),
                    "influxdb": {"url": influxdb.url, "database": DB, "flush_interval": "100ms"}})
    ing.start("collect", "ha", log="ha")
    ing.start("write", log="writer")
    wait_until(lambda: ing.ready("ha"), 60, "collector connected")
    target = {"entity_id": "alarm_control_panel.acc_alarm"}
    with real_ha.client() as client:
        client.call_service("alarm_control_panel", "alarm_arm_away", {"code": "1234"}, target)
        client.call_service("alarm_control_panel", "alarm_disarm", {"code": "1234"}, target)

    def calls() -> list[tuple[dict, dict]]:
        return [(dict(tags), fields) for (m, tags, _t), fields in read_points(influxdb, DB).items()
                if m == "ha_events" and dict(tags).get("domain") == "alarm_control_panel"]
    wait_until(lambda: len(calls()) == 2, 60, "both service calls in InfluxDB")
    for tags, fields in calls():
        assert tags["entity_id"] == "alarm_control_panel.acc_alarm"
        assert not any("code" in key for key in fields) and "1234" not in str(fields)
    assert metric(scrape(ing.config["metrics"]["ports"]["writer"]),
                  "ha_ingestor_secrets_withheld_total", source="ha") == 2

