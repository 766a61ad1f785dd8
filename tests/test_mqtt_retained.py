"""Retained MQTT messages across restarts, through the real pipeline: Mosquitto, ``collect mqtt``,
``write`` and InfluxDB 1.6.7, counted as points in InfluxDB. A retained message is one point
however often the broker sends it again; a new payload or a live message is a new point
(docs/mqtt.md, "Retained messages")."""

from __future__ import annotations

import re

import pytest

from tests.support.fixtures_ingestor import collector_config, start_collector
from tests.support.fixtures_mosquitto import publish
from tests.support.procs import kill_process, stop_process, tail, wait_until

DB = "retained"
RESENT = "retained message(s) sent again by the broker were stored before"
HELD = "held by the broker's session: nothing sent"


def pipeline_config(broker_port: int, influx_url: str, protocol: str, topics: list[str],
                    client_id: str = "test-retained") -> dict:
    return {**collector_config(broker_port, protocol=protocol, topics=topics,
                               client_id=client_id),
            "influxdb": {"api": "v1", "url": influx_url, "database": DB,
                         "flush_interval": "100ms"},
            "queue": {"batch_interval": "20ms"}}


class Points:
    """The MQTT points in InfluxDB, and a probe that proves everything before it was written."""

    def __init__(self, influxdb, broker_port: int, probe_prefix: str = "probe"):
        self.influxdb = influxdb
        self.port = broker_port
        self.prefix = probe_prefix
        self.probes = 0

    def rows(self, topic_regex: str) -> list[dict]:
        regex = topic_regex.replace("/", "\\/")
        return self.influxdb.query(f'SELECT * FROM "mqtt" WHERE "topic" =~ /{regex}/', DB)

    def settle(self, ing) -> None:
        """Publish a live probe and wait for its point: the broker delivers in order, so every
        message it sent before the probe has been committed and written by then."""
        self.probes += 1
        topic = f"{self.prefix}/{self.probes}"
        publish(self.port, 1, topic=topic, payloads=[b"probe"])
        try:
            wait_until(lambda: self.rows(f"^{topic}$"), 30, f"probe {topic} in InfluxDB",
                       interval=0.1)
        except TimeoutError:
            raise AssertionError(f"{topic} never reached InfluxDB\n"
                                 f"{tail(ing.log_path('mqtt'))}\n{tail(ing.log_path('writer'))}")


def resent(log_text: str) -> int:
    """Retained messages the collector recognised as sent again, by its log lines."""
    return sum(int(n) for n in re.findall(rf"(\d+) {re.escape(RESENT)}", log_text))


def per_topic(rows: list[dict]) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = {}
    for row in rows:
        out.setdefault(row["topic"], []).append((row["time"], row["value_str"], row["retained"]))
    return {topic: sorted(points) for topic, points in out.items()}


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_50_retained_messages_stay_50_points_across_restarts_then_10_new_payloads_add_10(
        mosquitto, influxdb, ingestor, protocol):
    influxdb.create_database(DB)
    configs = [f"ret/dev{i}/config" for i in range(50)]
    publish(mosquitto.port, 50, topic="ret/dev{i}/config", retain=True,
            payloads=[f"cfg{i}".encode() for i in range(50)])
    topics_before, topics_after = ["ret/#", "probe/#"], ["ret/+/config", "probe/#"]
    ing = ingestor(pipeline_config(mosquitto.port, influxdb.url, protocol, topics_before))
    writer = ing.start("write", log="writer")
    points = Points(influxdb, mosquitto.port)
    log = ing.log_path("mqtt")

    proc = start_collector(ing)
    points.settle(ing)
    first = per_topic(points.rows("^ret/"))
    assert sorted(first) == sorted(configs)

    def restart(how: str, between=None):
        nonlocal proc
        if how == "SIGKILL":
            kill_process(proc)
        else:
            assert stop_process(proc) == 0, tail(log)
        if between:
            between()
        proc = start_collector(ing)
        points.settle(ing)

    def broker_restart(collector_running: bool):
        connects = log.read_text().count("connected to MQTT broker")
        mosquitto.stop()
        mosquitto.start()
        if collector_running:
            wait_until(lambda: log.read_text().count("connected to MQTT broker") > connects, 30,
                       "collector reconnected")

    restart("SIGTERM")
    restart("SIGKILL")
    broker_restart(collector_running=True)
    points.settle(ing)
    restart("SIGTERM", between=lambda: broker_restart(collector_running=False))
    restart("SIGKILL", between=lambda: ing.write_config({"mqtt": {"topics": topics_after}}))
    restart("SIGTERM")

    text = log.read_text()
    if protocol == "3.1.1":     # every connect but the first and the topic change: nothing sent
        assert text.count(HELD) == 5, text
    else:                       # every connect subscribes, with Retain Handling 1
        assert text.count("Retain Handling 1") == 7 and HELD not in text, text
    # the broker sent the 50 again once: for the new filter ret/+/config
    assert resent(text) == 50, text
    assert "unsubscribed from ret/#" in text, text
    after = per_topic(points.rows("^ret/"))
    assert after == first, "a retained message became more than one point"
    assert {p[0][2] for p in after.values()} == {"true"}

    # 10 retained messages re-published with new payloads: delivered live, 10 more points
    publish(mosquitto.port, 10, topic="ret/dev{i}/config", retain=True,
            payloads=[f"cfg{i}-v2".encode() for i in range(10)])
    points.settle(ing)
    # and a change back to ret/# makes the broker send all 50 again: no point more
    restart("SIGKILL", between=lambda: ing.write_config({"mqtt": {"topics": topics_before}}))
    final = per_topic(points.rows("^ret/"))
    assert sum(len(p) for p in final.values()) == 60
    for i, topic in enumerate(configs):
        if i < 10:
            assert final[topic][0] == first[topic][0]
            assert final[topic][1][1:] == (f"cfg{i}-v2", "false")    # live delivery
        else:
            assert final[topic] == first[topic]
    assert resent(log.read_text()) == 100
    assert stop_process(proc) == 0 and stop_process(writer) == 0
