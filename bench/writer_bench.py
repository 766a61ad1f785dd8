"""Writer benchmark: drain a backlog of realistic HA and MQTT events into InfluxDB 1.6.7.

    .venv/bin/python bench/writer_bench.py [--events 1000000] [--batch-size 5000]

Starts its own ``influxd`` on a free loopback port (data in a temporary folder), fills the two
queue files with ``--events`` events (HA state changes with units and on/off states, call_service
events, zigbee2mqtt JSON and plain MQTT values; one point each), then in the same run:

1. ``influx_ceiling_points_per_s``: InfluxDB's own ceiling for this data: the same lines, built
   beforehand, posted by one client in ``--batch-size`` batches (gzip, like the writer);
2. ``drain_points_per_s``: ``ha-ingestor write`` as its own process, from start until both
   queues are empty, all points verified in InfluxDB (``--converter-process``: the writer's
   ``influxdb.converter_process``, ``no`` by default);
3. ``rss_mb_at_1m_backlog``: the writer's peak resident memory (VmHWM) during that drain, and
   ``converter_rss_mb`` the converter process's, when there is one;
4. ``cost_us_per_event``: the CPU time (``process_time``, so a busy machine inflates it less than
   wall time) of each step of the writer alone on a separate 100 000-event queue (take,
   decode, convert including the UTF-8 encoding of the line, ack; ``influx_post`` from step
   1), and the points/s one Python process could reach doing them back to back (``python_side_ceiling_points_per_s``; the writer
   overlaps the post with the next take and convert), or two, the writer taking and acking
   while a converter process decodes and converts (``python_side_ceiling_two_processes``);
5. ``cpu_us_per_point``: CPU time (utime + stime from /proc) of each process per point, during
   the ceiling run (influxd and the posting client) and the drain (influxd, the writer, its
   converter process), and from those the rates an idle 2-core machine would allow
   (``idle_2_core_projection``): each single-threaded process capped at one core, all of them
   together at two. A projection, not a measurement; it holds up on a busy machine, where the
   wall-clock figures above measure the other work as much as this one.

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
from tests.chaos.procfs import children, cpu_seconds  # noqa: E402
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


def ceiling(server: InfluxServer, points: int, batch_size: int, start_ns: int
            ) -> tuple[float, dict]:
    """Points/s for pre-built lines posted through the writer's own v1 sink, and the CPU µs per
    point of influxd and of this client."""
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
    influx_cpu, client_cpu = cpu_seconds(server.proc.pid), time.process_time()
    began = time.monotonic()
    for i in range(0, len(lines), batch_size):
        sink.write(lines[i:i + batch_size])
    elapsed = time.monotonic() - began
    cpu = {"influxd": cpu_seconds(server.proc.pid) - influx_cpu,
           "client": time.process_time() - client_cpu}
    sink.close()
    return len(lines) / elapsed, {k: round(v / len(lines) * 1e6, 2) for k, v in cpu.items()}


def cost_breakdown(workdir: Path, events: int, start_ns: int) -> dict:
    """CPU microseconds per event of each step of the writer, one at a time in this process, on
    a separate queue of ``events``: take (the item marked in flight and its JSON read), decode
    (the JSON into events), convert, ack."""
    from writer.convert import Converter
    queue_dir = workdir / "breakdown-queue"
    fill_queues(queue_dir, events, start_ns)
    convert = Converter(build_schema(SCHEMA)).convert
    spent = {"queue_take": 0.0, "decode": 0.0, "convert": 0.0, "queue_ack": 0.0}
    count = 0
    for source in ("ha", "mqtt"):
        consumer = queue.Consumer(queue_dir, source)
        while True:
            began = time.process_time()
            items = consumer.take(1)
            spent["queue_take"] += time.process_time() - began
            if not items:
                break
            began = time.process_time()
            decoded = items[0].events
            spent["decode"] += time.process_time() - began
            began = time.process_time()
            for event in decoded:
                convert(event).encode()          # the writer encodes each line itself
            spent["convert"] += time.process_time() - began
            began = time.process_time()
            consumer.ack([items[0].item_id])
            spent["queue_ack"] += time.process_time() - began
            count += items[0].count
        consumer.close()
    return {step: round(seconds / count * 1e6, 2) for step, seconds in spent.items()}


def rss_peak_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def drain(server: InfluxServer, workdir: Path, total: int, batch_size: int,
          converter_process: str) -> dict:
    server.create_database("home")
    config = {"queue": {"dir": str(workdir / "queue")},
              "mqtt": {"enabled": False}, "homeassistant": {"enabled": False},
              "influxdb": {"url": server.url, "database": "home", "batch_size": batch_size,
                           "converter_process": converter_process},
              "metrics": {"ports": {"writer": free_port()}}, "schema": SCHEMA}
    config_path = workdir / "writer.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log = open(workdir / "writer.log", "wb")
    began = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "ha_ingestor", "--config", str(config_path),
                             "write"], stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    peak = converter = 0.0
    influx_cpu = cpu_seconds(server.proc.pid)
    spent: dict[int, float] = {}
    while True:
        time.sleep(0.25)
        peak = max(peak, rss_peak_mb(proc.pid))
        converter = max([converter] + [rss_peak_mb(c) for c in children(proc.pid)])
        spent.update(_cpu_of([proc.pid] + children(proc.pid)))
        left = sum(s.ready + s.in_flight for s in
                   (queue.read_status(workdir / "queue", src) for src in ("ha", "mqtt")) if s)
        if left == 0:
            break
        if proc.poll() is not None:
            raise RuntimeError(f"writer exited with {proc.returncode}; see {workdir}/writer.log")
    elapsed = time.monotonic() - began
    peak = max(peak, rss_peak_mb(proc.pid))
    converter = max([converter] + [rss_peak_mb(c) for c in children(proc.pid)])
    spent.update(_cpu_of([proc.pid] + children(proc.pid)))
    influx_cpu = cpu_seconds(server.proc.pid) - influx_cpu
    proc.terminate()
    proc.wait(30)
    written = server.points_fast("home")
    per_point = {"influxd": influx_cpu, "writer": spent.pop(proc.pid, 0.0),
                 "converter": sum(spent.values())}
    return {"drain_s": round(elapsed, 2), "points_written": written,
            "drain_points_per_s": round(written / elapsed), "rss_mb_at_1m_backlog": round(peak, 1),
            "converter_rss_mb": round(converter, 1),
            "drain_cpu": {k: round(v / written * 1e6, 2) for k, v in per_point.items()}}


def _cpu_of(pids: list[int]) -> dict[int, float]:
    seconds = {}
    for pid in pids:
        try:
            seconds[pid] = cpu_seconds(pid)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return seconds


def idle_2_core_projection(ceiling_cpu: dict, drain_cpu: dict) -> dict:
    """Points/s an idle 2-core machine would allow: every single-threaded Python process
    capped at one core (influxd is multi-threaded), all processes together at two cores."""
    def rate(single_threaded: list[float], everything: list[float]) -> float:
        limits = [1e6 / us for us in single_threaded if us > 0]
        return min(limits + [2e6 / sum(everything)])
    top = rate([ceiling_cpu["client"]], list(ceiling_cpu.values()))
    drain = rate([drain_cpu["writer"], drain_cpu["converter"]], list(drain_cpu.values()))
    return {"ceiling_points_per_s": round(top), "drain_points_per_s": round(drain),
            "drain_vs_ceiling": round(drain / top, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--ceiling-points", type=int, default=200_000)
    parser.add_argument("--breakdown-events", type=int, default=100_000)
    parser.add_argument("--converter-process", choices=("auto", "yes", "no"), default="no",
                        help="the writer's influxdb.converter_process")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary folder (queue files, InfluxDB data, writer.log)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="writer-bench-"))
    server = InfluxServer(workdir / "influxdb").start()
    try:
        start_ns = time.time_ns() - 3 * 3600 * 10**9
        fill_s = fill_queues(workdir / "queue", args.events, start_ns)
        ceiling_pps, ceiling_cpu = ceiling(server, args.ceiling_points, args.batch_size,
                                           start_ns - 3600 * 10**9)
        result = drain(server, workdir, args.events, args.batch_size, args.converter_process)
        costs = cost_breakdown(workdir, args.breakdown_events, start_ns - 2 * 3600 * 10**9)
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    costs["influx_post"] = round(1e6 / ceiling_pps, 2)
    one_core = 1e6 / sum(costs[k] for k in ("queue_take", "decode", "convert", "queue_ack"))
    # with a converter process: the writer takes and acks, the converter decodes and converts
    two_cores = 1e6 / max(costs["queue_take"] + costs["queue_ack"],
                          costs["decode"] + costs["convert"])
    drain_cpu = result.pop("drain_cpu")
    print(json.dumps({"events": args.events, "batch_size": args.batch_size,
                      "converter_process": args.converter_process,
                      "fill_s": round(fill_s, 1), **result,
                      "influx_ceiling_points_per_s": round(ceiling_pps),
                      "drain_vs_ceiling": round(result["drain_points_per_s"] / ceiling_pps, 2),
                      "cost_us_per_event": costs,
                      "python_side_ceiling_points_per_s": round(one_core),
                      "python_side_ceiling_two_processes": round(two_cores),
                      "cpu_us_per_point": {"ceiling": ceiling_cpu, "drain": drain_cpu},
                      "idle_2_core_projection": idle_2_core_projection(ceiling_cpu, drain_cpu)}))


if __name__ == "__main__":
    main()
