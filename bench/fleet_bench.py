"""Fleet benchmark: central writers scaling out, and a site's writer into JetStream.

    .venv/bin/python bench/fleet_bench.py [--points 600000] [--edge-events 300000] [--runs 3]

Starts its own ``nats-server`` (JetStream, file store) and ``influxd`` on free loopback ports,
data in a temporary folder. Each run measures, in the same run:

1. ``influx_ceiling_points_per_s``: InfluxDB's own ceiling: the points the central writers will
   write (realistic HA and MQTT points with a site tag), built beforehand, posted by one client
   in batches of ``--batch-size`` through the writer's own v1 sink (``writer_bench.post_lines``);
2. ``central_points_per_s[N]`` for N = 1, 2, 3 central writers (``write --from-nats`` processes
   on one durable consumer): N writers start and subscribe, then ``--points`` points are
   published to the stream (messages of 500 lines, as sites send them), and the time from the
   first publish until the consumer has nothing pending or unacked gives points/s (the
   processes' start-up is not counted); every point is counted in InfluxDB (a fresh database
   per N);
3. ``nats_publish_ceiling_points_per_s``: nats-py's own ceiling: the same messages a site sends
   (500 lines each, with ``Nats-Msg-Id``), built beforehand and published with ``publish_async``
   from one process, all acks awaited;
4. ``edge_points_per_s``: ``ha-ingestor write`` with ``nats.publish`` draining a site queue of
   ``--edge-events`` events into JetStream (convert, site tag, publish, wait for the acks, ack
   the queue), from its first acknowledged queue item until the queue is empty;
5. ``direct_points_per_s``: the same queue drained by ``ha-ingestor write`` into InfluxDB (one
   home's path, no NATS), measured the same way: what one writer process converts, the bound of
   both.

Prints one JSON line per run and, with several runs, one line of medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nats  # noqa: E402
import yaml  # noqa: E402

from ha_ingestor.config.schema import build_schema  # noqa: E402
from bench.writer_bench import post_lines  # noqa: E402
from tests.support import fleet  # noqa: E402
from tests.support.fixtures_influx import InfluxServer, mixed_events  # noqa: E402
from tests.support.fixtures_nats import NatsServer  # noqa: E402
from tests.support.procs import free_port, stop_process  # noqa: E402

SCHEMA = {"mqtt": {"presets": ["zigbee2mqtt"]}}
MESSAGE_POINTS = 500
SUBJECT = "ha_ingestor.points.bench"


def site_lines(points: int, start_ns: int) -> list[bytes]:
    """Realistic points as a site publishes them: converted, with the site tag."""
    from writer.convert import Converter
    from writer.fleet.sink import series_end
    convert = Converter(build_schema(SCHEMA)).convert
    out = []
    for event in mixed_events(points, start_ns):
        line = convert(event).encode()
        end = series_end(line)
        out.append(line[:end] + b",site=bench" + line[end:])
    return out


def messages(lines: list[bytes], prefix: str) -> list[tuple[str, bytes]]:
    return [(f"{prefix}:{i}", b"\n".join(lines[i:i + MESSAGE_POINTS]))
            for i in range(0, len(lines), MESSAGE_POINTS)]


async def publish(url: str, msgs: list[tuple[str, bytes]]) -> float:
    """Publish every message with publish_async and wait for all acks; returns seconds."""
    nc = await nats.connect(url)
    js = nc.jetstream(timeout=30, publish_async_max_pending=100_000)
    began = time.monotonic()
    futures = [await js.publish_async(SUBJECT, payload, headers={"Nats-Msg-Id": msg_id})
               for msg_id, payload in msgs]
    await asyncio.gather(*futures)
    elapsed = time.monotonic() - began
    await nc.close()
    return elapsed


def config_file(workdir: Path, name: str, data: dict) -> Path:
    base = {"mqtt": {"enabled": False}, "homeassistant": {"enabled": False},
            "metrics": {"enabled": False}, "schema": SCHEMA}
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**base, **data}))
    return path


def start(workdir: Path, config: Path, name: str, *args: str) -> subprocess.Popen:
    log = open(workdir / f"{name}.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "ha_ingestor", "--config", str(config), *args],
                            stdout=log, stderr=subprocess.STDOUT, cwd=workdir)


def central_run(workdir: Path, nats_url: str, server: InfluxServer, lines: list[bytes],
                writers: int, batch_size: int) -> float:
    """N central writers, subscribed first, draining ``lines`` into a fresh database."""
    db = f"central{writers}"
    server.create_database(db)
    config = config_file(workdir, db, {
        **fleet.central_overrides([nats_url], server.url, db),
        "influxdb": {"url": server.url, "database": db, "batch_size": batch_size,
                     "flush_interval": "200ms"}})
    msgs = messages(lines, db)
    procs = [start(workdir, config, f"{db}-{i}", "write", "--from-nats")
             for i in range(writers)]
    try:
        wait_subscribed(workdir, db, procs)
        began = time.monotonic()
        asyncio.run(publish(nats_url, msgs))
        while True:
            state = fleet.jetstream_state([nats_url])
            if state["pending"] == 0 and state["ack_pending"] == 0:
                break
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"a central writer exited; see {workdir}")
            time.sleep(0.2)
        elapsed = time.monotonic() - began
    finally:
        for proc in procs:
            stop_process(proc, timeout=30)
    written = server.points_fast(db)
    if written != len(lines):
        raise RuntimeError(f"{written} points in InfluxDB, {len(lines)} published")
    return len(lines) / elapsed


def wait_subscribed(workdir: Path, name: str, procs: list[subprocess.Popen]) -> None:
    """Until every central writer logged its JetStream set-up (its pull subscription is bound)."""
    deadline = time.monotonic() + 120
    logs = [workdir / f"{name}-{i}.log" for i in range(len(procs))]
    while not all(log.exists() and "JetStream: found durable consumer" in
                  log.read_text(errors="replace") for log in logs):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise RuntimeError(f"the central writers did not subscribe; see {workdir}")
        time.sleep(0.1)


def drain_run(workdir: Path, name: str, events: int, start_ns: int, output: dict) -> float:
    """``ha-ingestor write`` draining a queue of ``events`` events to ``output`` (config);
    points/s from its first acknowledged queue item until the queue is empty (the process's
    start-up and the site's first round are not counted)."""
    queue_dir = workdir / f"{name}-queue"
    fleet.fill(queue_dir, mixed_events(events, start_ns))
    config = config_file(workdir, name, {"queue": {"dir": str(queue_dir)}, **output})
    proc = start(workdir, config, name, "write")
    first: tuple[float, int] | None = None
    try:
        while True:
            left = fleet.queued(queue_dir)
            if first is None and left < events:
                first = (time.monotonic(), left)
            if left == 0:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"the writer exited; see {workdir}/{name}.log")
            time.sleep(0.05)
        elapsed = time.monotonic() - first[0]
    finally:
        stop_process(proc, timeout=30)
    return first[1] / elapsed


def one_run(args, run: int) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    nats_server = NatsServer(workdir / "nats").start()
    influx = InfluxServer(workdir / "influxdb").start()
    load_before = os.getloadavg()[0]
    try:
        init = config_file(workdir, "init", {"nats": {"servers": [nats_server.url]}})
        subprocess.run([sys.executable, "-m", "ha_ingestor", "--config", str(init), "nats",
                        "init"], check=True, capture_output=True, cwd=workdir)
        start_ns = time.time_ns() - (run + 2) * 24 * 3600 * 10**9
        lines = site_lines(args.points, start_ns)
        result = {"run": run, "points": args.points, "batch_size": args.batch_size,
                  "influx_ceiling_points_per_s": round(post_lines(influx, lines,
                                                                  args.batch_size)[0])}
        result["central_points_per_s"] = {
            n: round(central_run(workdir, nats_server.url, influx, lines, n, args.batch_size))
            for n in (1, 2, 3)}
        msgs = messages(site_lines(args.edge_events, start_ns + 10**15), f"ceiling{run}")
        result["nats_publish_ceiling_points_per_s"] = round(
            args.edge_events / asyncio.run(publish(nats_server.url, msgs)))
        result["edge_points_per_s"] = round(drain_run(
            workdir, "site", args.edge_events, start_ns + 2 * 10**15,
            {"nats": {"publish": True, "servers": [nats_server.url], "site": "bench-site"},
             "influxdb": {"batch_size": args.batch_size}}))
        influx.create_database("direct")
        result["direct_points_per_s"] = round(drain_run(
            workdir, "direct", args.edge_events, start_ns + 3 * 10**15,
            {"influxdb": {"url": influx.url, "database": "direct",
                          "batch_size": args.batch_size}}))
        written = influx.points_fast("direct")
        if written != args.edge_events:
            raise RuntimeError(f"{written} points in InfluxDB, {args.edge_events} queued")
        result["load_average"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
        return ratios(result)
    finally:
        nats_server.stop()
        influx.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def ratios(result: dict) -> dict:
    ceiling = result["influx_ceiling_points_per_s"]
    result["central_vs_influx_ceiling"] = {n: round(v / ceiling, 2)
                                           for n, v in result["central_points_per_s"].items()}
    one = result["central_points_per_s"][1]
    result["central_speedup_vs_1_writer"] = {n: round(v / one, 2)
                                             for n, v in result["central_points_per_s"].items()}
    result["edge_vs_nats_ceiling"] = round(result["edge_points_per_s"] /
                                           result["nats_publish_ceiling_points_per_s"], 3)
    result["edge_vs_direct_writer"] = round(result["edge_points_per_s"] /
                                            result["direct_points_per_s"], 2)
    return result


def medians(results: list[dict]) -> dict:
    def med(get):
        return round(statistics.median(get(r) for r in results))
    out = {"median_of_runs": len(results),
           "influx_ceiling_points_per_s": med(lambda r: r["influx_ceiling_points_per_s"]),
           "central_points_per_s": {n: med(lambda r: r["central_points_per_s"][n])
                                    for n in (1, 2, 3)},
           "nats_publish_ceiling_points_per_s": med(
               lambda r: r["nats_publish_ceiling_points_per_s"]),
           "edge_points_per_s": med(lambda r: r["edge_points_per_s"]),
           "direct_points_per_s": med(lambda r: r["direct_points_per_s"])}
    return ratios(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=600_000)
    parser.add_argument("--edge-events", type=int, default=300_000)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders")
    args = parser.parse_args()
    results = []
    for run in range(1, args.runs + 1):
        results.append(one_run(args, run))
        print(json.dumps(results[-1]), flush=True)
    if len(results) > 1:
        print(json.dumps(medians(results)), flush=True)


if __name__ == "__main__":
    main()
