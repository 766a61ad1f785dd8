"""/metrics, /healthz and /readyz of the real processes, against real Mosquitto and InfluxDB 1.6.7.

What an administrator checks: the Prometheus text parses, its counters say what was really sent
and written, and the writer's /readyz follows InfluxDB going away and coming back.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ha_ingestor.envelope import mqtt_event
from ha_ingestor.queue import Producer
from tests.support.fixtures_mosquitto import publish
from tests.support.procs import tail, wait_until

DB = "home_assistant"


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics as {(name, sorted labels): value}; fails if it does not parse."""
    status, text = http_get(port, "/metrics")
    assert status == 200, f"/metrics answered {status}"
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_ready(port: int, what: str, timeout: float = 30) -> None:
    wait_until(lambda: http_get(port, "/readyz")[0] == 200, timeout, f"{what} /readyz 200")


def influx_values(influxdb, measurement: str, field: str, where: str = "") -> list[float]:
    rows = influxdb.query(f'SELECT "{field}" FROM "{measurement}" {where}', DB)
    return [row[field] for row in rows]


@pytest.fixture
def pipeline(mosquitto, influxdb, ingestor):
    """`collect mqtt` and `write` as separate processes, each with its own endpoint."""
    influxdb.create_database(DB)
    ing = ingestor({"mqtt": {"enabled": True, "host": "127.0.0.1", "port": mosquitto.port,
                             "client_id": "metrics-test"},
                    "influxdb": {"url": influxdb.url, "database": DB, "flush_interval": "200ms"}})
    ports = ing.config["metrics"]["ports"]
    procs = {"mqtt": ing.start("collect", "mqtt", log="mqtt"),
             "writer": ing.start("write", log="writer")}
    for name in procs:
        try:
            wait_ready(ports[name], name)
        except TimeoutError:
            raise AssertionError(f"{name} not ready:\n{tail(ing.log_path(name))}") from None
    return ing, ports, procs


def test_metrics_parse_and_counters_agree_with_what_was_sent(pipeline, mosquitto, influxdb):
    ing, ports, _procs = pipeline
    sent = 2000
    publish(mosquitto.port, sent, topic="metrics/test", qos=1,
            payloads=[str(i).encode() for i in range(sent)])
    wait_until(lambda: len(influx_values(influxdb, "mqtt", "value")) >= sent, 60,
               f"{sent} points in InfluxDB")
    assert sorted(influx_values(influxdb, "mqtt", "value")) == list(map(float, range(sent)))

    collector = scrape(ports["mqtt"])
    assert value(collector, "ha_ingestor_events_received_total", source="mqtt") == sent
    assert value(collector, "ha_ingestor_events_committed_total", source="mqtt") == sent
    assert 1 <= value(collector, "ha_ingestor_batches_committed_total", source="mqtt") <= sent
    assert value(collector, "ha_ingestor_connected", component="mqtt") == 1
    assert value(collector, "ha_ingestor_commit_latency_seconds_count", source="mqtt") > 0

    def writer_caught_up():
        writer = scrape(ports["writer"])
        return (value(writer, "ha_ingestor_events_written_total", source="mqtt") == sent
                and value(writer, "ha_ingestor_queue_ready_events", source="mqtt") == 0)
    wait_until(writer_caught_up, 20, "writer metrics up to date")
    writer = scrape(ports["writer"])
    assert value(writer, "ha_ingestor_points_written_total") == sent
    assert value(writer, "ha_ingestor_influxdb_up") == 1
    assert value(writer, "ha_ingestor_connected", component="writer") == 1
    assert value(writer, "ha_ingestor_write_latency_seconds_count") >= 1
    assert value(writer, "ha_ingestor_queue_in_flight_events", source="mqtt") == 0
    for port in (ports["mqtt"], ports["writer"]):
        assert http_get(port, "/healthz")[0] == 200


def test_writer_readyz_follows_influxdb_and_nothing_is_lost(influxdb, ingestor):
    influxdb.create_database(DB)
    ing = ingestor({"influxdb": {"url": influxdb.url, "database": DB, "flush_interval": "100ms",
                                 "timeout": "2s"}})
    port = ing.config["metrics"]["ports"]["writer"]
    ing.start("write", log="writer")
    wait_ready(port, "writer")

    producer = Producer(ing.queue_dir, "mqtt", 2**30)   # events arrive the way a collector adds them
    appended, stop = [], threading.Event()

    def trickle():
        while not stop.is_set():
            i = len(appended)
            producer.append([mqtt_event("readyz/test", str(i).encode(), 1, False)])
            appended.append(i)
            stop.wait(0.1)
    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(influx_values(influxdb, "mqtt", "value")) >= 5, 20, "first points")
        influxdb.stop()
        wait_until(lambda: http_get(port, "/readyz")[0] == 503, 30, "writer /readyz 503")
        assert http_get(port, "/healthz")[0] == 200          # alive, just not ready
        assert value(scrape(port), "ha_ingestor_influxdb_up") == 0
        time.sleep(2)                                         # events keep queueing meanwhile
        influxdb.start()
        wait_ready(port, "writer after InfluxDB returned", timeout=45)
        assert value(scrape(port), "ha_ingestor_influxdb_up") == 1
    finally:
        stop.set()
        thread.join(10)
        producer.close()
    wait_until(lambda: len(influx_values(influxdb, "mqtt", "value")) >= len(appended), 60,
               f"all {len(appended)} events written")
    assert sorted(influx_values(influxdb, "mqtt", "value")) == list(map(float, appended))
    retries = scrape(port)
    assert value(retries, "ha_ingestor_write_retries_total", reason="transient") >= 1


def test_ha_collector_counters_agree_with_what_ha_fired(ha_test_server, influxdb, ingestor):
    influxdb.create_database(DB)
    ing = ingestor({"homeassistant": {"enabled": True, "url": ha_test_server.url,
                                      "token": ha_test_server.token},
                    "influxdb": {"url": influxdb.url, "database": DB,
                                 "flush_interval": "200ms"}})
    ports = ing.config["metrics"]["ports"]
    ing.start("collect", "ha", log="ha")
    ing.start("write", log="writer")
    wait_ready(ports["ha"], "ha collector")
    wait_ready(ports["writer"], "writer")
    ha_test_server.burst(1000)
    ha_test_server.fire_event("call_service", {"domain": "light", "service": "turn_on"})
    fired = sum(ha_test_server.fired.values())
    assert fired >= 1001

    def collector_caught_up():
        return value(scrape(ports["ha"]), "ha_ingestor_events_received_total",
                     source="ha") == fired
    wait_until(collector_caught_up, 30, f"{fired} HA events received")
    collector = scrape(ports["ha"])
    stored = (fired + value(collector, "ha_ingestor_ha_resync_states_total")
              + value(collector, "ha_ingestor_ha_backfilled_total"))
    wait_until(lambda: value(scrape(ports["ha"]), "ha_ingestor_events_committed_total",
                             source="ha") == stored, 20, "HA events committed")
    assert value(collector, "ha_ingestor_connected", component="ha") == 1
    assert value(scrape(ports["ha"]), "ha_ingestor_events_dropped_total",
                 source="ha", reason="queue_full") == 0
    wait_until(lambda: value(scrape(ports["writer"]), "ha_ingestor_events_written_total",
                             source="ha") == stored, 30, "HA events written")
    rows = influxdb.query('SELECT count(*) FROM "ha_events"', DB)
    assert rows and max(v for k, v in rows[0].items() if k.startswith("count")) == 1


def test_healthz_fails_once_the_main_loop_has_not_ticked_for_the_stall_timeout():
    """/healthz is the main loop's heartbeat, not the HTTP thread's: a stuck loop fails it."""
    from ha_ingestor import metrics
    from ha_ingestor.lifecycle import HEARTBEAT
    from tests.support.procs import free_port
    port = free_port()
    server = metrics.serve("127.0.0.1", port, ready=lambda: True)
    saved = HEARTBEAT.timeout, HEARTBEAT.last
    try:
        HEARTBEAT.timeout = 2.0
        HEARTBEAT.tick()
        assert http_get(port, "/healthz")[0] == 200
        HEARTBEAT.last -= 3.0                      # as if the loop had been stuck for 3 s
        status, body = http_get(port, "/healthz")
        assert status == 503 and "has not ticked for 3 s (run.stall_timeout 2 s)" in body
        HEARTBEAT.tick()
        assert http_get(port, "/healthz")[0] == 200
    finally:
        HEARTBEAT.timeout, HEARTBEAT.last = saved
        server.shutdown()
        server.server_close()
