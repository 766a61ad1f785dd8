"""Writer benchmark: drain a backlog of realistic HA and MQTT events into InfluxDB 1.6.7.

    .venv/bin/python bench/writer_bench.py [--events 1000000] [--batch-size 5000]

Starts its own ``influxd`` on a free loopback port (data in a temporary folder), fills the two
queue files with ``--events`` events (HA state changes with units and on/off states, call_service
events, zigbee2mqtt JSON and plain MQTT values; one point each), then in the same run:

1. ``influx_ceiling_points_per_s``: InfluxDB's own ceiling for this data: the same lines, built
   beforehand, posted by one client in ``--batch-size`` batches (gzip, like the writer);
2. ``drain_points_per_s``: ``ha-ingestor write`` as its own process, from start until both
   queues are empty, all points verified in InfluxDB;
3. ``rss_mb_at_1m_backlog``: the writer's peak resident memory (VmHWM) during that drain;
4. ``cost_us_per_event``: each step of the writer timed alone on a separate 100 000-event queue
   (take, convert including the UTF-8 encoding of the line, ack; ``influx_post`` from step 1),
   and the points/s one Python process could
   reach doing them back to back (``python_side_ceiling_points_per_s``; the writer overlaps the
   post with the next take and convert).

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from ha_ingestor import queue  # noqa: E402
from ha_ingestor.config.schema import build_schema  # noqa: E402
from tests.support.fixtures_influx import InfluxServer, mixed_events  # noqa: E402
from tests.support.procs import free_port  # noqa: E402

SCHEMA = {"mqtt": {"presets": ["zigbee2mqtt"]}}
CHUNK = 1000


def fill_queues(queue_dir: Path, total: int, start_ns: int) -> float:
    """Append ``total`` events in items of ~CHUNK events per source; returns seconds taken."""
    began = time.monotonic()
    producers = {s: queue.Producer(queue_dir, s, 2**40) for s in ("ha", "mqtt")}
    for offset in range(0, total, CHUNK * 2):
        events = mixed_events(min(CHUNK * 2, total - offset), start_ns + offset * 1_000_000)
        for source, producer in producers.items():
            part = [e for e in events if e["src"] == source]
            if part:
                producer.append(part)
    for producer in producers.values():
        producer.close()
    return time.monotonic() - began


def ceiling(server: InfluxServer, points: int, batch_size: int, start_ns: int) -> float:
    """Points/s for pre-built lines posted through the writer's own v1 sink."""
    from ha_ingestor.config import load_config
    from writer.convert import Converter
    from writer.sink_v1 import SinkV1
    convert = Converter(build_schema(SCHEMA)).convert
    lines = [convert(e).encode() for e in mixed_events(points, start_ns)]
    server.create_database("ceiling")
    config_path = Path(tempfile.mkdtemp()) / "c.yaml"
    config_path.write_text(yaml.safe_dump({"influxdb": {"url": server.url, "database": "ceiling"},
                                           "mqtt": {"enabled": False},
                                           "homeassistant": {"enabled": False}}))
    sink = SinkV1(load_config(config_path).influxdb)
    began = time.monotonic()
    for i in range(0, len(lines), batch_size):
        sink.write(lines[i:i + batch_size])
    elapsed = time.monotonic() - began
    sink.close()
    return len(lines) / elapsed


def cost_breakdown(workdir: Path, events: int, start_ns: int) -> dict:
    """Microseconds per event of each step of the writer, one at a time in this process, on a
    separate queue of ``events``: take (persist-queue's SELECT, status commit and JSON decode of
    the item), convert, ack."""
    from writer.convert import Converter
    queue_dir = workdir / "breakdown-queue"
    fill_queues(queue_dir, events, start_ns)
    convert = Converter(build_schema(SCHEMA)).convert
    took = converted = acked = 0.0
    count = 0
    for source in ("ha", "mqtt"):
        consumer = queue.Consumer(queue_dir, source)
        while True:
            began = time.perf_counter()
            items = consumer.take(1)
            took += time.perf_counter() - began
            if not items:
                break
            began = time.perf_counter()
            for event in items[0].events:
                convert(event).encode()          # the writer encodes each line itself
            converted += time.perf_counter() - began
            began = time.perf_counter()
            consumer.ack([items[0].item_id])
            acked += time.perf_counter() - began
            count += len(items[0].events)
        consumer.close()
    return {"queue_take": round(took / count * 1e6, 2), "convert": round(converted / count * 1e6, 2),
            "queue_ack": round(acked / count * 1e6, 2)}


def rss_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def drain(server: InfluxServer, workdir: Path, total: int, batch_size: int) -> dict:
    server.create_database("home")
    config = {"queue": {"dir": str(workdir / "queue")},
              "mqtt": {"enabled": False}, "homeassistant": {"enabled": False},
              "influxdb": {"url": server.url, "database": "home", "batch_size": batch_size},
              "metrics": {"ports": {"writer": free_port()}}, "schema": SCHEMA}
    config_path = workdir / "writer.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log = open(workdir / "writer.log", "wb")
    began = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "ha_ingestor", "--config", str(config_path),
                             "write"], stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    peak = 0.0
    while True:
        time.sleep(0.25)
        peak = max(peak, rss_peak_mb(proc.pid))
        left = sum(s.ready + s.in_flight for s in
                   (queue.read_status(workdir / "queue", src) for src in ("ha", "mqtt")) if s)
        if left == 0:
            break
        if proc.poll() is not None:
            raise RuntimeError(f"writer exited with {proc.returncode}; see {workdir}/writer.log")
    elapsed = time.monotonic() - began
    peak = max(peak, rss_peak_mb(proc.pid))
    proc.terminate()
    proc.wait(30)
    written = server.points_fast("home")
    return {"drain_s": round(elapsed, 2), "points_written": written,
            "drain_points_per_s": round(written / elapsed), "rss_mb_at_1m_backlog": round(peak, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--ceiling-points", type=int, default=200_000)
    parser.add_argument("--breakdown-events", type=int, default=100_000)
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary folder (queue files, InfluxDB data, writer.log)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="writer-bench-"))
    server = InfluxServer(workdir / "influxdb").start()
    try:
        start_ns = time.time_ns() - 3 * 3600 * 10**9
        fill_s = fill_queues(workdir / "queue", args.events, start_ns)
        ceiling_pps = ceiling(server, args.ceiling_points, args.batch_size,
                              start_ns - 3600 * 10**9)
        result = drain(server, workdir, args.events, args.batch_size)
        costs = cost_breakdown(workdir, args.breakdown_events, start_ns - 2 * 3600 * 10**9)
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    costs["influx_post"] = round(1e6 / ceiling_pps, 2)
    one_core = 1e6 / (costs["queue_take"] + costs["convert"] + costs["queue_ack"])
    print(json.dumps({"events": args.events, "batch_size": args.batch_size,
                      "fill_s": round(fill_s, 1), **result,
                      "influx_ceiling_points_per_s": round(ceiling_pps),
                      "drain_vs_ceiling": round(result["drain_points_per_s"] / ceiling_pps, 2),
                      "cost_us_per_event": costs,
                      "python_side_ceiling_points_per_s": round(one_core)}))


if __name__ == "__main__":
    main()
