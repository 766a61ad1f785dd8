"""Catch-up on a big Home Assistant: ``ha-ingestor collect ha`` closing an hour-long gap on a real
HA (2024.3.3, or ``--ha-version``) with 5 000 entities while HA keeps firing 100 state changes/s.
What it costs in memory, and how long it takes next to the time HA needs to hand the same hour
over.

    .venv/bin/python bench/ha_catchup_bench.py [--changes 90000,360000] [--entities 5000]
                                               [--rate 100] [--ha-version 2025.4.4]

For each size in ``--changes`` (increasing): HA's recorder is filled up to that many state changes
(made faster than real time by HA's ``python_script`` integration, ~1 700/s here; an hour at
100 changes/s is 360 000), a fresh queue file gets watermarks one hour back (as if the collector
had last been connected an hour ago), and the collector starts while HA fires the live load. It
backfills the hour, resyncs and logs "caught up". Two sizes show whether memory follows the gap.

Prints one JSON line; per size:
  recorder_changes     state changes in HA's recorder within the hour (all sizes so far)
  backfilled           state changes the collector read back (ha_ingestor_ha_backfilled_total)
  catch_up_s           collector start -> "caught up" in its log (the catch-up is durable)
  backfilled_per_s     backfilled / catch_up_s
  read_only_s          the same hour read from HA right after, through the collector's own
                       connection and Backfill class, storing nothing (HA's part: the ceiling)
  rss_peak_mb          the collector's VmHWM at "caught up"
  rss_sampled_max_mb   the largest VmRSS sampled every 0.1 s during the catch-up
  rss_steady_mb        VmRSS 10 s after "caught up", at the live rate
  live_events          events received live during the run
  live_dropped         ha_ingestor_events_dropped_total (must be 0)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from collectors.homeassistant.backfill import Backfill, Plan  # noqa: E402
from collectors.homeassistant.committer import ENTITY_MARKS_KEY, WATERMARK_KEY  # noqa: E402
from collectors.homeassistant.connection import HAConnection  # noqa: E402
from collectors.homeassistant.ledger import LiveLedger  # noqa: E402
from ha_ingestor.config import load_config  # noqa: E402
from ha_ingestor.queue import Producer  # noqa: E402
from tests.support.fixtures_homeassistant import metric, scrape  # noqa: E402
from tests.support.ha_load import (StateLoad, bulk_changes, load_entity_ids,  # noqa: E402
                                   start_big_ha)
from tests.support.ha_venv import DEFAULT_HA_VERSION, HA_VERSIONS  # noqa: E402
from tests.support.procs import free_port  # noqa: E402

HOUR = 3600.0


class Collector:
    """``ha-ingestor collect ha`` with its own config, queue and log; samples its memory."""

    def __init__(self, workdir: Path, server):
        self.workdir = workdir
        self.port = free_port()
        config = {"queue": {"dir": str(workdir / "queue")}, "mqtt": {"enabled": False},
                  "homeassistant": {"enabled": True, "url": server.ws_url,
                                    "token": server.token},
                  "metrics": {"ports": {"ha": self.port, "mqtt": free_port(),
                                        "writer": free_port(), "run": free_port()}}}
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.yaml").write_text(json.dumps(config))   # JSON is YAML
        self.log_path = workdir / "collector.log"
        self.proc: subprocess.Popen | None = None
        self.rss_max_kb = 0
        self._sampling = False

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HA_INGESTOR_")}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "ha_ingestor", "--config",
                                          str(self.workdir / "config.yaml"), "collect", "ha"],
                                         stdout=log, stderr=subprocess.STDOUT, env=env,
                                         cwd=self.workdir)
        self._sampling = True
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while self._sampling:
            self.rss_max_kb = max(self.rss_max_kb, self.status_kb("VmRSS"))
            time.sleep(0.1)

    def status_kb(self, field: str) -> int:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def wait_for_log(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log_path.read_text():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"no {text!r} in the collector's log:\n"
                                   f"{self.log_path.read_text()[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        self._sampling = False
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)


def set_marks_back(queue_dir: Path, entity_ids: list[str], seconds: float) -> None:
    """A fresh queue file whose watermarks are ``seconds`` old, for every entity."""
    then = time.time() - seconds
    producer = Producer(queue_dir, "ha", 2**40)
    try:
        producer.set_meta(WATERMARK_KEY, datetime.fromtimestamp(then, timezone.utc).isoformat())
        producer.set_meta(ENTITY_MARKS_KEY, json.dumps({e: then for e in entity_ids}))
    finally:
        producer.close()


def read_only(config_path: Path, entity_ids: list[str]) -> tuple[float, int]:
    """Seconds and changes to read the last hour from HA through the collector's own connection
    and Backfill class, storing nothing."""
    connection = HAConnection(load_config(config_path, env={}).homeassistant,
                              lambda events, rx_ns: None)
    connection.connect()
    connection.authenticate()
    connection.start_reader()
    try:
        backfill = Backfill(connection.request, LiveLedger(), lambda chunk: None, 300.0, 1000)
        began = time.monotonic()
        result = backfill.run_pass(Plan(datetime.now(timezone.utc) - timedelta(seconds=HOUR),
                                        entity_ids))
        return time.monotonic() - began, result.stored
    finally:
        connection.close()


def catch_up(workdir: Path, server, entity_ids: list[str], entities: int,
             rate: float) -> dict:
    collector = Collector(workdir, server)
    set_marks_back(workdir / "queue", entity_ids, HOUR)
    load = StateLoad(server, load_entity_ids(entities), rate=rate).start()
    try:
        began = time.monotonic()
        collector.start()
        collector.wait_for_log("caught up", 3600)
        catch_up_s = time.monotonic() - began
        peak_kb, sampled_kb = collector.status_kb("VmHWM"), collector.rss_max_kb
        time.sleep(10)
        steady_kb = collector.status_kb("VmRSS")
        samples = scrape(collector.port)
    finally:
        collector.stop()
        load.stop()
    backfilled = metric(samples, "ha_ingestor_ha_backfilled_total")
    return {"backfilled": int(backfilled), "catch_up_s": round(catch_up_s, 1),
            "backfilled_per_s": round(backfilled / catch_up_s),
            "rss_peak_mb": round(peak_kb / 1024, 1),
            "rss_sampled_max_mb": round(sampled_kb / 1024, 1),
            "rss_steady_mb": round(steady_kb / 1024, 1),
            "live_events": int(metric(samples, "ha_ingestor_events_received_total",
                                      source="ha")),
            "live_dropped": int(sum(v for (name, _), v in samples.items()
                                    if name == "ha_ingestor_events_dropped_total"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", default="90000,360000")
    parser.add_argument("--entities", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--ha-version", default=DEFAULT_HA_VERSION, choices=HA_VERSIONS)
    args = parser.parse_args()
    sizes = sorted(int(n) for n in args.changes.split(","))
    runs = []
    with tempfile.TemporaryDirectory(prefix="ha-catchup-bench-") as tmp:
        tmpdir = Path(tmp)
        server = start_big_ha(tmpdir / "ha", entities=args.entities, version=args.ha_version)
        try:
            with server.client() as client:
                entity_ids = sorted(s["entity_id"] for s in client.get_states())
            made = 0
            for size in sizes:
                began = time.monotonic()
                bulk_changes(server, size - made, args.entities)
                made_s = time.monotonic() - began
                made = size
                run = {"recorder_changes": size, "made_in_s": round(made_s, 1)}
                run.update(catch_up(tmpdir / f"collector-{size}", server, entity_ids,
                                    args.entities, args.rate))
                read_s, read_rows = read_only(tmpdir / f"collector-{size}" / "config.yaml",
                                              entity_ids)
                run.update({"read_only_s": round(read_s, 1), "read_only_changes": read_rows})
                runs.append(run)
                print(json.dumps(run), file=sys.stderr, flush=True)
        finally:
            server.stop()
    print(json.dumps({
        "bench": "ha_catchup", "ha_version": args.ha_version, "entities": len(entity_ids),
        "live_rate": args.rate, "gap_s": HOUR, "runs": runs,
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python "
                   f"{platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}))


if __name__ == "__main__":
    main()
