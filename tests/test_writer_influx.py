"""The writer against real servers: InfluxDB 1.6.7 (v1 API) and VictoriaMetrics (v2 API).

Each test fills the queue files the way the collectors do, runs ``ha-ingestor write`` as its own
process and counts what reached the database.
"""

from __future__ import annotations

import re
import signal
import time

import pytest

from ha_ingestor import queue
from tests.support.fixtures_influx import ha_state_event, mixed_events
from tests.support.fleet import fill, pending
from tests.support.procs import kill_process, stop_process, tail, wait_until

pytestmark = pytest.mark.slow

DB = "home"


def influx_v1(server, **extra):
    return {"influxdb": {"api": "v1", "url": server.url, "database": DB, "batch_size": 5000,
                         "flush_interval": "200ms", **extra},
            "schema": {"mqtt": {"presets": ["zigbee2mqtt"]}}}


def start_writer(ing):
    return ing.start("write", log="writer")


def wait_drained(ing, timeout=120):
    wait_until(lambda: pending(ing.queue_dir)[0] == 0, timeout, "queue drained")


def now_minus(seconds):
    return time.time_ns() - int(seconds * 1e9)


def test_20000_events_land_in_influxdb_v1(influxdb, ingestor):
    influxdb.create_database(DB)
    ing = ingestor(influx_v1(influxdb))
    proc = start_writer(ing)            # before any queue file exists: it must pick them up
    time.sleep(1.5)
    fill(ing.queue_dir, mixed_events(20_000, now_minus(3600)))
    wait_drained(ing)
    assert influxdb.points(DB) == 20_000, tail(ing.log_path("writer"))
    assert stop_process(proc) == 0
    assert pending(ing.queue_dir) == (0, 0)


def test_20000_events_land_in_victoriametrics_v2(victoriametrics, ingestor):
    ing = ingestor({"influxdb": {"api": "v2", "url": victoriametrics.url, "org": "home",
                                 "bucket": "ha", "token": "unused", "batch_size": 5000,
                                 "flush_interval": "200ms"},
                    "schema": {"mqtt": {"presets": ["zigbee2mqtt"]}}})
    fill(ing.queue_dir, mixed_events(20_000, now_minus(3600)))
    proc = start_writer(ing)
    wait_drained(ing)
    # one always-numeric field per event kind; VictoriaMetrics keeps numbers only
    per_event = re.compile(r"^(°C_value|switch\.plug_\d+_value|ha_events_fired|"
                           r"zigbee2mqtt_temperature|mqtt_value)$")

    def stored():
        return sum(len(s["timestamps"]) for s in victoriametrics.export()
                   if per_event.match(s["metric"]["__name__"]))
    wait_until(lambda: stored() == 20_000, 30, "20 000 samples searchable in VictoriaMetrics")
    assert stop_process(proc) == 0


def test_outage_of_30_s_loses_nothing_and_writes_nothing_twice(influxdb, ingestor):
    influxdb.create_database(DB)
    ing = ingestor(influx_v1(influxdb))
    start = now_minus(3600)
    events = mixed_events(20_000, start)
    fill(ing.queue_dir, events[:1000])
    proc = start_writer(ing)
    wait_drained(ing)
    influxdb.kill()
    outage_started = time.monotonic()
    for i in range(1000, 20_000, 1000):          # events keep arriving during the outage
        fill(ing.queue_dir, events[i:i + 1000])
        time.sleep(1.2)
    time.sleep(max(0.0, 30 - (time.monotonic() - outage_started)))
    assert pending(ing.queue_dir)[0] == 19_000
    port = ing.config["metrics"]["ports"]["writer"]
    assert http_status(port, "/readyz") == 503
    assert "ha_ingestor_influxdb_up 0.0" in http_body(port, "/metrics")
    influxdb.start()
    wait_drained(ing, timeout=90)
    assert http_status(port, "/readyz") == 200
    assert "ha_ingestor_points_written_total 20000.0" in http_body(port, "/metrics")
    expected = {}
    for event in events:
        line = ing_converter().convert(event)
        measurement, tags = _series_of(line)
        expected[(measurement, tags)] = expected.get((measurement, tags), 0) + 1
    assert influxdb.series_counts(DB) == expected
    assert proc.poll() is None, "the writer must ride out the outage"
    log = ing.log_path("writer").read_text()
    assert "keeping the batch" in log and "accepts writes again" in log
    assert stop_process(proc) == 0


def test_sigkill_mid_batch_then_restart_leaves_counts_unchanged(influxdb, ingestor):
    influxdb.create_database(DB)
    ing = ingestor(influx_v1(influxdb, batch_size=2000))
    fill(ing.queue_dir, mixed_events(60_000, now_minus(3600)))
    proc = start_writer(ing)
    wait_until(lambda: influxdb.points(DB) > 0, 60, "first points written")
    kill_process(proc)                          # SIGKILL: the batch in flight is not acked
    assert pending(ing.queue_dir)[0] > 0, "the kill must happen before the backlog is drained"
    in_flight = sum(queue.read_status(ing.queue_dir, s).in_flight for s in ("ha", "mqtt"))
    assert in_flight > 0, "the kill must happen while a batch is taken and not yet acked"
    proc = start_writer(ing)
    wait_drained(ing)
    assert influxdb.points(DB) == 60_000
    assert stop_process(proc, sig=signal.SIGTERM) == 0


def test_poison_events_are_dead_lettered_and_the_rest_written(influxdb, ingestor):
    influxdb.create_database(DB)
    # "poison" already holds `value` as a string: a float `value` there is a type conflict
    influxdb.write(DB, f'poison,domain=sensor,entity_id=old value="text" {now_minus(7200)}')
    ing = ingestor(influx_v1(influxdb))
    start = now_minus(3600)
    events = mixed_events(4_998, start)
    conflict = ha_state_event("sensor.poisoned", "12.5", {"unit_of_measurement": "poison"},
                              start + 10_000 * 1_000_000)
    malformed = {"src": "ha", "rx": start, "kind": "live",
                 "event": {"event_type": "state_changed", "time_fired": "not a time",
                           "data": {"new_state": {"entity_id": "sensor.broken", "state": "1"}}}}
    events[1234:1234] = [conflict]
    events[4000:4000] = [malformed]
    assert len(events) == 5_000
    fill(ing.queue_dir, events, per_item=5_000)
    proc = start_writer(ing)
    wait_drained(ing)
    assert influxdb.points(DB) == 4_998 + 1            # + the pre-existing string point
    assert pending(ing.queue_dir) == (0, 2)
    assert stop_process(proc) == 0

    listed = ing.run("queue", "dead")
    assert listed.returncode == 0, listed.stderr
    assert "field type conflict" in listed.stdout, listed.stdout
    assert "not a time" in listed.stdout or "Invalid isoformat" in listed.stdout, listed.stdout
    requeued = ing.run("queue", "requeue-dead")
    assert requeued.returncode == 0, requeued.stderr
    assert pending(ing.queue_dir) == (2, 0)
    back = {e.get("event", {}).get("time_fired") for e in ing.read_all("ha")}
    assert "not a time" in back and conflict["event"]["time_fired"] in back


def test_wrong_credentials_are_reported_and_nothing_is_dropped(influxdb_auth, ingestor):
    influxdb_auth.create_database(DB)
    ing = ingestor(influx_v1(influxdb_auth, username="admin", password="wrong"))
    fill(ing.queue_dir, mixed_events(3_000, now_minus(3600)))
    proc = start_writer(ing)
    log = ing.log_path("writer")
    wait_until(lambda: "refused the credentials" in log.read_text(), 30, "credentials error")
    assert "influxdb.username/password" in log.read_text()
    assert proc.poll() is None
    assert stop_process(proc) == 0
    assert pending(ing.queue_dir) == (3_000, 0)
    assert influxdb_auth.points(DB) == 0
    ing.write_config({"influxdb": {"password": "admin"}})
    proc = start_writer(ing)
    wait_drained(ing)
    assert influxdb_auth.points(DB) == 3_000
    assert stop_process(proc) == 0


def test_missing_database_is_reported_and_nothing_is_dropped(influxdb, ingestor):
    ing = ingestor(influx_v1(influxdb))
    fill(ing.queue_dir, mixed_events(3_000, now_minus(3600)))
    proc = start_writer(ing)
    log = ing.log_path("writer")
    wait_until(lambda: "has no database 'home'" in log.read_text(), 30, "missing database error")
    assert pending(ing.queue_dir) == (3_000, 0)
    influxdb.create_database(DB)                 # fixed while the writer keeps retrying
    wait_drained(ing, timeout=90)
    assert influxdb.points(DB) == 3_000
    assert stop_process(proc) == 0


def test_readiness_follows_influxdb_while_idle(influxdb, ingestor):
    influxdb.create_database(DB)
    ing = ingestor(influx_v1(influxdb))
    proc = start_writer(ing)
    port = ing.config["metrics"]["ports"]["writer"]
    wait_until(lambda: _status_or_none(port) == 200, 20, "writer ready")
    influxdb.kill()
    wait_until(lambda: http_status(port, "/readyz") == 503, 20, "not ready without InfluxDB")
    influxdb.start()
    wait_until(lambda: http_status(port, "/readyz") == 200, 20, "ready again")
    assert stop_process(proc) == 0


def _status_or_none(port: int) -> int | None:
    try:
        return http_status(port, "/readyz")
    except OSError:
        return None


def test_too_large_requests_are_split(tmp_path, ingestor):
    from tests.support.fixtures_influx import InfluxServer
    small = InfluxServer(tmp_path / "small-influxdb", max_body_size=100_000).start()
    try:
        small.create_database(DB)
        ing = ingestor(influx_v1(small, gzip=False))   # 5 000 lines are ~1 MB: 413, then halves
        fill(ing.queue_dir, mixed_events(5_000, now_minus(3600)))
        proc = start_writer(ing)
        wait_drained(ing)
        assert small.points(DB) == 5_000
        assert pending(ing.queue_dir) == (0, 0)
        assert stop_process(proc) == 0
    finally:
        small.stop()


def test_https_with_a_ca_file_and_verification(tmp_path, ingestor):
    from tests.support.fixtures_influx import InfluxServer
    server = InfluxServer(tmp_path / "tls-influxdb", tls=True).start()
    try:
        server.create_database(DB)
        unverified = ingestor(influx_v1(server), name="no-ca")    # system CAs only: refused
        fill(unverified.queue_dir, mixed_events(1_000, now_minus(3600)))
        proc = start_writer(unverified)
        log = unverified.log_path("writer")
        wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in log.read_text(), 30, "TLS error")
        assert stop_process(proc) == 0 and pending(unverified.queue_dir) == (1_000, 0)

        trusted = ingestor(influx_v1(server, tls={"ca_file": server.ca_file}), name="ca")
        fill(trusted.queue_dir, mixed_events(1_000, now_minus(3600)))
        proc = start_writer(trusted)
        wait_drained(trusted)
        assert stop_process(proc) == 0

        insecure = ingestor(influx_v1(server, tls={"verify": False}), name="insecure")
        fill(insecure.queue_dir, mixed_events(1_000, now_minus(1800)))
        proc = start_writer(insecure)
        wait_drained(insecure)
        assert stop_process(proc) == 0
        assert server.points(DB) == 2_000
    finally:
        server.stop()


def test_https_v2_api_with_a_ca_file(tmp_path, ingestor):
    from tests.support.fixtures_influx import VictoriaMetricsServer
    server = VictoriaMetricsServer(tmp_path / "tls-vm", tls=True).start()
    try:
        ing = ingestor({"influxdb": {"api": "v2", "url": server.url, "org": "o", "bucket": "b",
                                     "token": "t", "tls": {"ca_file": server.ca_file}}})
        fill(ing.queue_dir, mixed_events(1_000, now_minus(600)))
        proc = start_writer(ing)
        wait_drained(ing)
        assert stop_process(proc) == 0
        wait_until(lambda: any(s["metric"]["__name__"] == "ha_events_fired"
                               for s in server.export()), 30, "points searchable")
    finally:
        server.stop()


def test_v2_api_against_a_server_without_it_is_explained(influxdb, ingestor):
    ing = ingestor({"influxdb": {"api": "v2", "url": influxdb.url, "org": "o", "bucket": "b",
                                 "token": "t"}})
    fill(ing.queue_dir, mixed_events(500, now_minus(600)))
    proc = start_writer(ing)
    log = ing.log_path("writer")
    wait_until(lambda: "need influxdb.api: v1" in log.read_text(), 30, "API mismatch error")
    assert "has no bucket 'b' in org 'o'" in log.read_text()
    assert stop_process(proc) == 0
    assert pending(ing.queue_dir) == (500, 0)


# ---- helpers ---------------------------------------------------------------------------------

def http_body(port: int, path: str) -> str:
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return response.read().decode()


def http_status(port: int, path: str) -> int:
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def ing_converter():
    from ha_ingestor.config.schema import build_schema
    from writer.convert import Converter
    global _CONVERTER
    if _CONVERTER is None:
        _CONVERTER = Converter(build_schema({"mqtt": {"presets": ["zigbee2mqtt"]}}))
    return _CONVERTER


_CONVERTER = None


def _series_of(line: str) -> tuple[str, tuple]:
    """(measurement, sorted tags) of a line, unescaped the way InfluxDB 1.x stores them."""
    head = re.split(r"(?<!\\) ", line, maxsplit=1)[0]
    parts = re.split(r"(?<!\\),", head)
    unescape = lambda s: re.sub(r"\\([ ,=])", r"\1", s)  # noqa: E731
    tags = tuple(sorted(tuple(unescape(x) for x in re.split(r"(?<!\\)=", p, maxsplit=1))
                        for p in parts[1:]))
    return unescape(parts[0]), tags
