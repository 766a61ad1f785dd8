"""``metrics.influxdb``: every process of ``ha-ingestor run`` (the supervisor, the MQTT collector,
the writer) writes its own counters and gauges to InfluxDB 1.6.7, where they equal what its
/metrics says; and an InfluxDB for the metrics that never answers delays no event: the snapshots
are dropped and counted."""

from __future__ import annotations

import importlib.util
import json
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.support.fixtures_homeassistant import scrape
from tests.support.fixtures_mosquitto import publish
from tests.support.procs import free_port, wait_until

MESSAGES = 300


def run_pipeline(ingestor, mosquitto, influxdb, metrics_influxdb: dict):
    influxdb.create_database("home_assistant")
    ing = ingestor({"mqtt": {"enabled": True, "host": "127.0.0.1", "port": mosquitto.port,
                             "client_id": "metrics-test", "topics": ["metrics-test/#"]},
                    "influxdb": {"url": influxdb.url, "flush_interval": "100ms"},
                    "metrics": {"influxdb": metrics_influxdb}})
    ing.start("run", log="run")
    ports = ing.config["metrics"]["ports"]
    wait_until(lambda: "subscribed to" in ing.log_path("run").read_text(), 60,
               "collector subscribed")
    publish(mosquitto.port, MESSAGES, topic="metrics-test/{i}", qos=1)
    wait_until(lambda: _points(influxdb, "home_assistant") >= MESSAGES, 60, "events written")
    return ing, ports


def _points(influxdb, db: str) -> int:
    rows = influxdb.query('SELECT count("value_str") FROM "mqtt"', db)   # payloads "m<i>"
    return int(rows[0]["count"]) if rows else 0


def counters_in_influxdb(influxdb, db: str, process: str) -> dict:
    result = influxdb._raw_query(f"SELECT last(\"value\") FROM /^ha_ingestor_.*_total$/ "
                                 f"WHERE \"process\" = '{process}' GROUP BY *", db)
    found = {}
    for series in result["results"][0].get("series", []):
        labels = tuple(sorted((k, v) for k, v in series["tags"].items()
                              if k not in ("process", "host") and v))
        found[(series["name"], labels)] = series["values"][0][1]
    return found


def counters_on_metrics_page(port: int) -> dict:
    return {key: value for key, value in scrape(port).items()
            if key[0].startswith("ha_ingestor_") and key[0].endswith("_total")}


def test_every_process_writes_its_counters_and_they_match_metrics(ingestor, mosquitto,
                                                                   influxdb):
    influxdb.create_database("ingestor")
    ing, ports = run_pipeline(ingestor, mosquitto, influxdb,
                              {"enabled": True, "interval": "1s", "database": "ingestor"})
    for process in ("writer", "mqtt", "run"):
        page = {}

        def same() -> bool:
            page.update(counters_on_metrics_page(ports[process]))
            stored = counters_in_influxdb(influxdb, "ingestor", process)
            return bool(page) and stored == page

        wait_until(same, 30, f"{process}'s counters in InfluxDB equal to its /metrics")
        assert any(v > 0 for v in page.values()), page
    written = counters_in_influxdb(influxdb, "ingestor", "writer")
    assert written[("ha_ingestor_events_written_total", (("source", "mqtt"),))] == MESSAGES
    builds = influxdb.query('SELECT last("value") FROM "ha_ingestor_build_info" GROUP BY '
                            '"process"', "ingestor")
    assert {row["_tags"]["process"] for row in builds} == {"writer", "mqtt", "run"}
    assert_dashboards_query_this_data(influxdb)


def assert_dashboards_query_this_data(influxdb) -> None:
    """Every panel's query of the InfluxDB dashboards runs as Grafana would send it; the
    ingestor dashboard's panels over what this run did show data (rates need two of the
    dashboards' 10 s intervals)."""
    render = _load_script("render_dashboards")
    wanted = ("Received per second", "Written to InfluxDB per second", "Events waiting",
              "Connected", "Memory per process", "Running versions", "Metrics export")
    shown: dict[str, int] = {}

    def series_per_panel(name: str, db: str) -> dict[str, int]:
        dashboard = json.loads((render.GRAFANA / name).read_text())
        end = time.time_ns() + 10**9
        counts: dict[str, int] = {}
        for panel, target in render.panel_queries(dashboard):
            query = render.expand(target["query"], end - 600 * 10**9, end, panel.get("interval"))
            counts[panel["title"]] = counts.get(panel["title"], 0) + \
                len(render.run(influxdb, query, db))
        return counts

    series_per_panel("home-assistant-influxdb.json", "home_assistant")     # they run

    def ingestor_panels_show_data() -> bool:
        shown.update(series_per_panel("ha-ingestor-influxdb.json", "ingestor"))
        return all(shown[title] > 0 for title in wanted)

    wait_until(ingestor_panels_show_data, 60, f"dashboard panels with data: {shown}")


def _load_script(name: str):
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BlackHole:
    """Accepts TCP connections and never answers: an InfluxDB that hangs."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.mark.parametrize("target", ["hangs", "refuses"])
def test_an_unusable_metrics_influxdb_delays_no_event(ingestor, mosquitto, influxdb, target):
    hole = BlackHole() if target == "hangs" else None
    port = hole.port if hole else free_port()
    try:
        ing, ports = run_pipeline(ingestor, mosquitto, influxdb, {
            "enabled": True, "interval": "1s", "timeout": "1s", "url": f"http://127.0.0.1:{port}"})
        reason = "unreachable"
        for process in ("writer", "mqtt"):
            wait_until(lambda: scrape(ports[process]).get(
                ("ha_ingestor_metrics_export_dropped_total", (("reason", reason),)), 0) >= 2,
                30, f"{process}'s dropped snapshots counted")
        assert _points(influxdb, "home_assistant") == MESSAGES
        log = ing.log_path("run").read_text()
        assert log.count("cannot write this process's metrics to InfluxDB") == 3, log[-3000:]
    finally:
        if hole:
            hole.close()
