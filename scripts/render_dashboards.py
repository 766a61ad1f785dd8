#!/usr/bin/env python3
"""Pictures of the InfluxDB Grafana dashboards (deploy/grafana/*-influxdb.json) from real data,
for docs/ (Grafana itself cannot be installed here).

By default it runs the demo's pipeline (Mosquitto, InfluxDB, a real Home Assistant, ``ha-ingestor
run`` with ``metrics.influxdb`` on) for ``--seconds``, then runs every panel's own InfluxQL query,
as Grafana would (``$timeFilter``, ``$__interval``, ``$host`` filled in), and draws each panel where
its ``gridPos`` puts it, with matplotlib:

    make dashboards                     # or: .venv/bin/python scripts/render_dashboards.py
    .venv/bin/python scripts/render_dashboards.py --seconds 300 --fake-ha
    .venv/bin/python scripts/render_dashboards.py --influx-url http://127.0.0.1:8086 \\
        --database home_assistant      # an InfluxDB that already has data: render only
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

DASHBOARDS = {"ha-ingestor-influxdb.json": "ha-ingestor-influxdb.png",
              "home-assistant-influxdb.json": "home-assistant-influxdb.png"}
GRAFANA = ROOT / "deploy" / "grafana"
IMAGES = ROOT / "docs" / "img"


# ---- the queries, as Grafana expands them ---------------------------------------------------------

def interval_for(seconds: float, points: int = 120) -> str:
    """Grafana's ``$__interval``: the window over about ``points`` points, at least 1 s."""
    return f"{max(1, round(seconds / points))}s"


def expand(query: str, start_ns: int, end_ns: int, min_interval: str | None = None) -> str:
    """``$timeFilter``, ``$__interval`` (at least the panel's min interval) and ``$host`` (all)."""
    interval = interval_for((end_ns - start_ns) / 1e9)
    if min_interval and _seconds(min_interval) > _seconds(interval):
        interval = min_interval
    return (query.replace("$timeFilter", f"time >= {start_ns} AND time <= {end_ns}")
            .replace("$__interval", interval).replace("/^$host$/", "/.*/"))


def _seconds(interval: str) -> float:
    number, unit = re.match(r"(\d+)([smh])", interval).groups()
    return int(number) * {"s": 1, "m": 60, "h": 3600}[unit]


def panel_queries(dashboard: dict):
    """(panel, target) for every target of every panel."""
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel, target


def run(influx, query: str, database: str) -> list[dict]:
    """The series of one InfluxQL query: [{name, tags, columns, values}]."""
    result = influx._raw_query(query, database)
    return result["results"][0].get("series", [])


def label(alias: str, series: dict) -> str:
    tags = series.get("tags") or {}
    text = re.sub(r"\$tag_(\w+)", lambda m: tags.get(m.group(1), ""), alias or series["name"])
    return text.replace("$measurement", series["name"]).strip()


# ---- drawing ------------------------------------------------------------------------------------

def render(dashboard: dict, influx, database: str, start_ns: int, end_ns: int, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"])
    fig = plt.figure(figsize=(16, rows * 0.42 + 0.8))
    fig.suptitle(f"{dashboard['title']} — {_when(start_ns)} to {_when(end_ns)} UTC", fontsize=13)
    for panel in dashboard["panels"]:
        ax = fig.add_axes(_box(panel["gridPos"], rows))
        ax.set_title(panel["title"], fontsize=10, loc="left")
        series = [(label(t.get("alias", ""), s), s) for t in panel["targets"]
                  for s in run(influx, expand(t["query"], start_ns, end_ns,
                                              panel.get("interval")), database)]
        if panel["type"] == "table":
            _table(ax, series)
        else:
            unit = panel["fieldConfig"]["defaults"].get("unit")
            _lines(ax, series, panel["type"] == "state-timeline", *UNITS.get(unit, (1, "")))
            _time_axis(ax, (end_ns - start_ns) / 1e9)
    IMAGES.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    print(f"wrote {out.relative_to(ROOT)}")


def _box(grid: dict, rows: int) -> list[float]:
    top = 1 - 0.6 / (rows * 0.42 + 0.8)
    height = top - 0.02
    return [grid["x"] / 24 + 0.04, top - (grid["y"] + grid["h"]) / rows * height + 0.03,
            grid["w"] / 24 - 0.06, grid["h"] / rows * height - 0.07]


UNITS = {"bytes": (2**-20, "MiB"), "percentunit": (100, "%"), "s": (1, "s"), "ops": (1, "/s"),
         "watt": (1, "W"), "kwatth": (1, "kWh"), "celsius": (1, "°C"), "percent": (1, "%")}


def _lines(ax, series: list, step: bool, scale: float = 1, unit: str = "") -> None:
    for name, s in series:
        points = [(datetime.fromtimestamp(v[0] / 1e9, timezone.utc), v[1] * scale)
                  for v in s["values"] if v[1] is not None]
        if points:
            xs, ys = zip(*points)
            if step:
                ax.step(xs, ys, label=name, where="post")
            else:
                ax.plot(xs, ys, label=name)
    if series:
        ax.legend(fontsize=7, loc="upper left")
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.tick_params(labelsize=7)
    ax.set_ylabel(unit, fontsize=8)


def _time_axis(ax, seconds: float) -> None:
    """Ticks on whole minutes (about six of them), labelled HH:MM: each label once."""
    from matplotlib.dates import DateFormatter, MinuteLocator, SecondLocator
    if seconds >= 180:
        ax.xaxis.set_major_locator(MinuteLocator(interval=max(1, round(seconds / 360))))
        ax.xaxis.set_major_formatter(DateFormatter("%H:%M"))
    else:
        ax.xaxis.set_major_locator(SecondLocator(interval=max(1, round(seconds / 6))))
        ax.xaxis.set_major_formatter(DateFormatter("%H:%M:%S"))


def _table(ax, series: list) -> None:
    ax.axis("off")
    cells = [[name] for name, _s in series] or [["no data"]]
    ax.table(cellText=cells, loc="upper left", cellLoc="left").set_fontsize(9)


def _when(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, timezone.utc).strftime("%Y-%m-%d %H:%M")


# ---- data: the demo's pipeline ------------------------------------------------------------------

def record(args) -> tuple[object, int, int, object]:
    """Run the demo stack with metrics.influxdb on; returns (influx, start, end, stack)."""
    import demo
    demo.ensure_debian_packages()
    workdir = (ROOT / ".dashboards").resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    stack = demo.Stack(workdir)
    version = demo.pick_ha_version(None)
    if not args.fake_ha:
        demo.ensure_real_ha(version)
    mosquitto = demo.start_mosquitto(stack)
    influx = demo.start_influxdb(stack)
    ha = demo.HomeAssistant(stack, args.fake_ha, version)
    config_path, ports = demo.write_config(workdir, mosquitto, influx, ha,
                                           metrics_influxdb={"enabled": True, "interval": "5s"})
    start = time.time_ns()
    demo.start_ingestor(stack, config_path, ports)
    demo.generate_activity(args.seconds, ha, mosquitto.port)
    demo.wait_drained(config_path)
    time.sleep(6)                          # one more metrics snapshot after the drain
    return influx, start, time.time_ns(), stack


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=240, help="activity to record (240)")
    parser.add_argument("--fake-ha", action="store_true", help="the HA test server, not a real HA")
    parser.add_argument("--influx-url", help="render from this InfluxDB 1.x instead")
    parser.add_argument("--database", default="home_assistant")
    parser.add_argument("--minutes", type=float, default=60, help="window with --influx-url")
    args = parser.parse_args()
    stack = None
    if args.influx_url:
        from tests.support.fixtures_influx import InfluxServer
        influx = InfluxServer.__new__(InfluxServer)
        influx.url, influx.auth, influx.ca_file = args.influx_url, False, None
        end = time.time_ns()
        start = end - int(args.minutes * 60e9)
    else:
        influx, start, end, stack = record(args)
    try:
        for source, image in DASHBOARDS.items():
            dashboard = json.loads((GRAFANA / source).read_text())
            render(dashboard, influx, args.database, start, end, IMAGES / image)
    finally:
        if stack is not None:
            stack.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
