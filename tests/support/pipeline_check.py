"""Drive a real Home Assistant and a real broker, then wait for what they carried to be in InfluxDB:
the end-to-end check shared by the add-on's and the images' tests (whatever runs the pipeline:
the add-on's entrypoint, the product image, the add-on image).
"""

from __future__ import annotations

import time
from typing import Callable

import pytest

from tests.support.fixtures_mosquitto import publish
from tests.support.procs import wait_until
from tests.support.real_ha import EventRecorder, change_calls, drive

DB = "home_assistant"


def influx_state_points(influxdb, db: str = DB) -> set[tuple[str, str, int]]:
    """(domain, object id, time ns) of every point with HA's ``domain``/``entity_id`` tags."""
    result = influxdb._raw_query("SELECT * FROM /.*/ GROUP BY *", db)
    found = set()
    for series in result["results"][0].get("series", []):
        tags = series.get("tags") or {}
        if "domain" in tags and "entity_id" in tags:
            found |= {(tags["domain"], tags["entity_id"], row[0]) for row in series["values"]}
    return found


def mqtt_points(influxdb, prefix: str, db: str = DB) -> int:
    return sum(count for (measurement, tags), count in influxdb.series_counts(db).items()
               if measurement == "mqtt" and dict(tags).get("topic", "").startswith(prefix))


def expect_events_land(real_ha, broker_port: int, influxdb, log: Callable[[], str],
                       prefix: str, messages: int = 50, calls: int = 24,
                       username: str | None = None, password: str | None = None,
                       skip_domains: tuple[str, ...] = ()) -> set[tuple[str, str, int]]:
    """Make ``calls`` state-changing service calls in HA and publish ``messages`` QoS 1 messages
    under ``prefix``; wait until every state change HA fired (outside ``skip_domains``) and every
    message is a point in InfluxDB. Returns the state points stored. ``log()`` is shown on
    failure."""
    from writer.schema_ha import time_to_ns
    recorder = EventRecorder(real_ha)
    try:
        with real_ha.client() as client:
            drive(client, change_calls(calls), window=4)
        published = publish(broker_port, messages, topic=prefix + "{i}", qos=1,
                            username=username, password=password)
        assert len(published.acked) == messages
        time.sleep(2)                     # the automation's counter change follows the toggle
    finally:
        fired = recorder.stop()
    wanted = set()
    for event in fired:
        if event["event_type"] == "state_changed":
            domain, object_id = event["data"]["entity_id"].split(".", 1)
            if domain not in skip_domains:
                wanted.add((domain, object_id, time_to_ns(event["time_fired"])))
    assert len(wanted) >= calls
    try:
        wait_until(lambda: wanted <= influx_state_points(influxdb)
                   and mqtt_points(influxdb, prefix) == messages,
                   120, "HA state changes and MQTT messages in InfluxDB", interval=1)
    except TimeoutError:
        missing = wanted - influx_state_points(influxdb)
        pytest.fail(f"{len(missing)} of {len(wanted)} state changes missing, "
                    f"{mqtt_points(influxdb, prefix)}/{messages} MQTT points\n{log()}")
    return influx_state_points(influxdb)
