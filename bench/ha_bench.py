"""Home Assistant collector benchmark: ``ha-ingestor collect ha`` (a real process) fed by the
project's HA test server, and a real HA 2024.3.3 for the ceiling HA itself reaches.

    .venv/bin/python bench/ha_bench.py [--events 200000] [--repeat 3] [--latency-seconds 20]
                                       [--no-real-ha]

Prints one JSON line:
  events_per_s             events committed durably per second, sustained over --events state
                           changes (~1 KB each, coalesced frames as HA sends them), median of
                           --repeat runs; the server is held at most 20 000 events ahead of the
                           commits so that nothing is dropped (drops are reported and must be 0)
  server_events_per_s      events / time the test server spent emitting (TCP back-pressure from
                           the collector included, so a floor of the feed's own ceiling)
  p99_commit_latency_ms    at 500 events/s: frame received (the envelope's ``rx``) to the batch's
                           insert in the commit that made it durable (``Batch.enqueued_at``)
  p50_commit_latency_ms    same, median
  rss_mb                   collector's peak resident memory during the 500 events/s run
  rss_mb_burst             collector's peak resident memory during the throughput runs
  real_ha_max_events_per_s the most events a real HA 2024.3.3 fired in one second, driven unpaced
                           over its WebSocket API on this machine (all event types; and
                           real_ha_max_state_changed_per_s for state_changed alone)
  headroom_ratio           events_per_s / real_ha_max_events_per_s
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ha_ingestor.queue import Consumer  # noqa: E402
from tests.support.ha_test_server import HATestServer  # noqa: E402
from tests.support.procs import free_port  # noqa: E402

AHEAD_MAX = 20_000         # events the server may be ahead of the commits
CHUNK = 2_000


class Collector:
    """One ``ha-ingestor collect ha`` process with its own config and queue folder."""

    def __init__(self, workdir: Path, server: HATestServer):
        self.workdir = workdir
        self.metrics_port = free_port()
        config = {
            "queue": {"dir": str(workdir / "queue")},
            "mqtt": {"enabled": False},
            "homeassistant": {"enabled": True, "url": server.url, "token": server.token},
            "metrics": {"ports": {"ha": self.metrics_port, "mqtt": free_port(),
                                  "writer": free_port(), "run": free_port()}},
        }
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.yaml").write_text(json.dumps(config))   # JSON is YAML
        env = {k: v for k, v in os.environ.items() if not k.startswith("HA_INGESTOR_")}
        self.log = open(workdir / "collector.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "ha_ingestor", "--config",
                                      str(workdir / "config.yaml"), "collect", "ha"],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     cwd=workdir)
        self.peak_rss_kb = 0

    def metric(self, name: str) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                      timeout=5).read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def sample_rss(self) -> None:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    self.peak_rss_kb = max(self.peak_rss_kb, int(line.split()[1]))
        except OSError:
            pass

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self.log.close()


def throughput_run(workdir: Path, events: int) -> dict:
    server = HATestServer(token="bench", entities=16).start()
    collector = Collector(workdir, server)
    try:
        server.wait_for_subscribers(1, timeout=60)
        base = collector.metric("ha_ingestor_events_committed_total")   # the resync snapshot
        fired, emit_seconds = 0, 0.0
        started = time.perf_counter()
        while True:
            committed = collector.metric("ha_ingestor_events_committed_total") - base
            collector.sample_rss()
            if committed >= events:
                break
            if fired < events and fired - committed < AHEAD_MAX:
                chunk = min(CHUNK, events - fired)
                emit_started = time.perf_counter()
                server.burst(chunk)
                emit_seconds += time.perf_counter() - emit_started
                fired += chunk
            else:
                time.sleep(0.01)
        elapsed = time.perf_counter() - started
        dropped = collector.metric("ha_ingestor_events_dropped_total")
    finally:
        collector.stop()
        server.stop()
    return {"events_per_s": events / elapsed, "server_events_per_s": events / emit_seconds,
            "dropped": dropped, "rss_kb": collector.peak_rss_kb}


def latency_run(workdir: Path, seconds: float, rate: float = 500.0) -> dict:
    server = HATestServer(token="bench", entities=16).start()
    collector = Collector(workdir, server)
    try:
        server.wait_for_subscribers(1, timeout=60)
        time.sleep(1.0)
        server.set_rate(rate)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            collector.sample_rss()
            time.sleep(0.2)
        server.set_rate(0)
        time.sleep(1.0)
        dropped = collector.metric("ha_ingestor_events_dropped_total")
    finally:
        collector.stop()
        server.stop()
    consumer = Consumer(workdir / "queue", "ha")
    latencies = []
    while batches := consumer.take(10_000):
        for batch in batches:
            latencies.extend(batch.enqueued_at - e["rx"] / 1e9 for e in batch.events
                             if e["kind"] == "live")
    consumer.close()
    latencies.sort()
    return {"p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
            "p50_ms": 1000 * statistics.median(latencies), "events": len(latencies),
            "rate": len(latencies) / seconds, "dropped": dropped, "rss_kb": collector.peak_rss_kb}


def real_ha_ceiling(workdir: Path, calls: int = 4000) -> tuple[int, int]:
    """Drive a real HA 2024.3.3 unpaced: the most events (all types, state_changed) it fired
    in one second."""
    from tests.support.real_ha import EventRecorder, HomeAssistantServer, change_calls, drive

    ha = HomeAssistantServer(workdir / "real-ha").start()
    try:
        recorder = EventRecorder(ha)
        with ha.client() as client:
            drive(client, change_calls(calls), window=64)
        time.sleep(1)
        recorder.stop()
        return recorder.max_rate(), recorder.max_rate("state_changed")
    finally:
        ha.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--no-real-ha", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ha-bench-") as tmp:
        tmpdir = Path(tmp)
        runs = [throughput_run(tmpdir / f"throughput-{i}", args.events)
                for i in range(args.repeat)]
        latency = latency_run(tmpdir / "latency", args.latency_seconds)
        ceiling, ceiling_states = (None, None) if args.no_real_ha else real_ha_ceiling(tmpdir)
    events_per_s = statistics.median(r["events_per_s"] for r in runs)
    result = {
        "bench": "ha_collector", "events": args.events, "repeat": args.repeat,
        "events_per_s": round(events_per_s),
        "events_per_s_runs": [round(r["events_per_s"]) for r in runs],
        "server_events_per_s": round(statistics.median(r["server_events_per_s"] for r in runs)),
        "dropped": sum(r["dropped"] for r in runs) + latency["dropped"],
        "p99_commit_latency_ms": round(latency["p99_ms"], 1),
        "p50_commit_latency_ms": round(latency["p50_ms"], 1),
        "latency_rate_events_per_s": round(latency["rate"]),
        "rss_mb": round(latency["rss_kb"] / 1024, 1),
        "rss_mb_burst": round(max(r["rss_kb"] for r in runs) / 1024, 1),
        "real_ha_max_events_per_s": ceiling,
        "real_ha_max_state_changed_per_s": ceiling_states,
        "headroom_ratio": round(events_per_s / ceiling, 1) if ceiling else None,
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python "
                   f"{platform.python_version()}",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
