"""Import benchmark: `ha-ingestor import history` of a million recorded state changes from a real
Home Assistant 2024.3.3, next to HA's own time for the same requests, and live end-to-end latency
with and without an import being written.

    .venv/bin/python bench/import_bench.py [--rows 1000000] [--entities 100] [--live-seconds 20]
                                            [--json out.json]

Phases:
  fill      HA is started once (onboarding, the recorder's schema) and stopped; ROWS state changes
            of ENTITIES power sensors over the last 24 hours are written into its recorder
            database with the recorder's own tables (states, states_meta, state_attributes, and
            the first recorder run moved before them): the one way to have a million changes
            recorded in the past. HA is started again and serves them as its own.
  HA alone  (once before the import to warm HA's caches, measured after it) the requests
            `import history` makes (windows of import.window x chunks of
            import.entities_per_request), sent by a bare WebSocket client that only receives the
            answers: the time HA itself needs, the ceiling of any client.
  import    `ha-ingestor import history` of the whole period into a queue directory: wall time,
            rows/s, peak RSS (the kernel's high-water mark of the process, from wait4) and RSS
            sampled every 0.5 s.
  live      a writer on InfluxDB 1.6; the bench appends live state changes to ha.db at
            LIVE_RATE/s as the HA collector does (batches every 50 ms) and polls InfluxDB every
            50 ms: latency = time_fired -> first seen in InfluxDB. Alternately without an import
            (a queue directory holding no import.db) and with one (the import phase's
            import.db, a million events, being written meanwhile), twice each; p50/p99 per run.
Prints a Markdown table and one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import websocket
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ha_ingestor import queue  # noqa: E402
from ha_ingestor.config import load_config  # noqa: E402
from ha_ingestor.envelope import ha_event  # noqa: E402
from tests.support.fixtures_influx import InfluxServer  # noqa: E402
from tests.support.procs import start_process, stop_process, tail  # noqa: E402
from tests.support.real_ha import HomeAssistantServer  # noqa: E402

CLI = [sys.executable, "-m", "ha_ingestor"]
LIVE_RATE = 200                 # live state changes per second
LIVE_ENTITY = "input_number.bench_live"
DB = "bench"
ATTRIBUTES = {"unit_of_measurement": "W", "device_class": "power", "state_class": "measurement"}


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


# ---- fill: a million recorded changes -----------------------------------------------------------

def fill_recorder(db_path: Path, rows: int, entities: int, end: datetime) -> list[str]:
    """ROWS changes of ENTITIES sensors, evenly over the 24 hours before ``end``."""
    ids = [f"sensor.bench_{i:03d}" for i in range(entities)]
    conn = sqlite3.connect(db_path)
    with conn:
        meta, attrs = {}, {}
        for entity_id in ids:
            meta[entity_id] = conn.execute("INSERT INTO states_meta (entity_id) VALUES (?)",
                                           (entity_id,)).lastrowid
            shared = json.dumps({**ATTRIBUTES, "friendly_name": entity_id.split(".")[1]},
                                separators=(",", ":"))
            attrs[entity_id] = conn.execute(
                "INSERT INTO state_attributes (hash, shared_attrs) VALUES (?, ?)",
                (abs(hash(shared)) % 2**32, shared)).lastrowid
        per_entity = rows // entities
        step = 86400.0 / per_entity
        first = end.timestamp() - 86400.0
        rng = random.Random(7)
        batch = []
        for n in range(per_entity):
            for k, entity_id in enumerate(ids):
                stamp = round(first + n * step + k * step / entities, 6)
                batch.append((f"{rng.uniform(0, 3000):.1f}", stamp, stamp, attrs[entity_id],
                               meta[entity_id]))
            if len(batch) >= 50_000:
                _insert_states(conn, batch)
                batch = []
        _insert_states(conn, batch)
        # HA answers no history request that ends before its first recorder run: the run that
        # recorded these changes started before them
        since = datetime.fromtimestamp(first - 60, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
        conn.execute("UPDATE recorder_runs SET start = ? WHERE run_id = "
                     "(SELECT min(run_id) FROM recorder_runs)", (since,))
    conn.close()
    return ids


def _insert_states(conn: sqlite3.Connection, batch: list[tuple]) -> None:
    conn.executemany("INSERT INTO states (state, last_changed_ts, last_updated_ts, attributes_id,"
                     " metadata_id, origin_idx) VALUES (?, ?, ?, ?, ?, 0)", batch)


def import_defaults() -> tuple[float, int]:
    """``import.window`` and ``import.entities_per_request`` as the import runs them here."""
    config = load_config(None, {"HA_INGESTOR_HOMEASSISTANT__ENABLED": "false"})
    return config.imports.window, config.imports.entities_per_request


# ---- HA alone -----------------------------------------------------------------------------------

def ha_alone(ha: HomeAssistantServer, ids: list[str], start: datetime, end: datetime,
             window: float, per_request: int) -> dict:
    """The import's requests, answers received whole and not decoded."""
    # as HAConnection reads: UTF-8 not validated frame by frame in Python
    ws = websocket.create_connection(ha.ws_url, timeout=600, suppress_origin=True,
                                     skip_utf8_validation=True)
    ws.recv()
    ws.send(json.dumps({"type": "auth", "access_token": ha.token}))
    ws.recv()
    began, received, requests, msg_id = time.monotonic(), 0, 0, 0
    cursor = start
    while cursor < end:
        stop = min(cursor + timedelta(seconds=window), end)
        for offset in range(0, len(ids), per_request):
            msg_id += 1
            ws.send(json.dumps({"id": msg_id, "type": "history/history_during_period",
                                "start_time": (cursor - timedelta(microseconds=1)).isoformat(),
                                "end_time": stop.isoformat(),
                                "entity_ids": ids[offset:offset + per_request],
                                "include_start_time_state": False,
                                "significant_changes_only": False, "no_attributes": False,
                                "minimal_response": False}))
            received += len(ws.recv_data()[1])
            requests += 1
        cursor = stop
    ws.close()
    return {"seconds": time.monotonic() - began, "requests": requests, "bytes": received}


# ---- import ---------------------------------------------------------------------------------------

def write_config(folder: Path, ha: HomeAssistantServer, influx: InfluxServer) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ha-ingestor.yaml"
    path.write_text(yaml.safe_dump({
        "queue": {"dir": str(folder / "queue"), "max_bytes": "4GiB"},
        "mqtt": {"enabled": False},
        "homeassistant": {"enabled": False, "url": ha.ws_url, "token": ha.token},
        "influxdb": {"url": influx.url, "database": DB},
        "metrics": {"enabled": False}}))
    return path


def run_import(config: Path, ids: list[str], start: datetime, end: datetime) -> dict:
    argv = CLI + ["--config", str(config), "import", "history", "--since", start.isoformat(),
                  "--until", end.isoformat()] + [a for e in ids for a in ("--entity", e)]
    log = config.parent / "import.log"
    began = time.monotonic()
    proc = start_process(argv, log)
    samples = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            try:
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        samples.append(int(line.split()[1]) / 1024)
            except OSError:
                return
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    seconds = time.monotonic() - began
    if proc.returncode != 0:
        raise RuntimeError(f"import exited {proc.returncode}:\n{tail(log)}")
    queued = queue.read_status(config.parent / "queue", "import")
    return {"seconds": seconds, "rows": queued.ready, "rows_per_s": queued.ready / seconds,
            "peak_rss_mb": usage.ru_maxrss / 1024, "rss_samples_mb": samples,
            "queue_bytes": queued.bytes}


# ---- live latency ---------------------------------------------------------------------------------

class Live:
    """Live state changes into ha.db at LIVE_RATE/s; their latency to InfluxDB."""

    def __init__(self, influx: InfluxServer, queue_dir: Path):
        self.influx = influx
        self.queue_dir = queue_dir
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.sent = 0

    def run(self, seconds: float) -> None:
        threads = [threading.Thread(target=self._produce, args=(seconds,)),
                   threading.Thread(target=self._poll)]
        for thread in threads:
            thread.start()
        threads[0].join()
        time.sleep(3)                    # the last events reach InfluxDB
        self.stop.set()
        threads[1].join()

    def _produce(self, seconds: float) -> None:
        producer = queue.Producer(self.queue_dir, "ha", 2**31)
        end = time.monotonic() + seconds
        per_tick = max(1, LIVE_RATE // 20)
        while time.monotonic() < end:
            tick = time.monotonic()
            events = []
            for _ in range(per_tick):
                self.sent += 1
                now = datetime.now(timezone.utc)
                state = {"entity_id": LIVE_ENTITY, "state": str(self.sent), "attributes": {},
                         "last_changed": now.isoformat(), "last_updated": now.isoformat()}
                events.append(ha_event({"event_type": "state_changed", "time_fired":
                                        now.isoformat(), "origin": "LOCAL", "context": None,
                                        "data": {"entity_id": LIVE_ENTITY, "old_state": None,
                                                 "new_state": state}}))
            producer.append(events)
            time.sleep(max(0.0, 0.05 - (time.monotonic() - tick)))
        producer.close()

    def _poll(self) -> None:
        last = time.time_ns() - 10**9
        while not self.stop.is_set():
            result = self.influx._raw_query(
                f'SELECT "value" FROM "{LIVE_ENTITY}" WHERE time > {last}', DB)
            seen = time.time()
            for series in result["results"][0].get("series", []):
                for stamp, _value in series["values"]:
                    self.latencies.append(seen - stamp / 1e9)
                    last = max(last, stamp)
            time.sleep(0.05)


def live_run(config: Path, influx: InfluxServer, seconds: float) -> dict:
    folder = config.parent
    qdir = folder / "queue"
    writer = start_process(CLI + ["--config", str(config), "write"], folder / "writer.log")
    try:
        time.sleep(2)
        before = queue.read_status(qdir, "import")
        live = Live(influx, qdir)
        live.run(seconds)
        after = queue.read_status(qdir, "import")
    finally:
        stop_process(writer, timeout=60)
    imported = (before.ready - after.ready) if before and after else 0
    return {"sent": live.sent, "seen": len(live.latencies),
            "p50_s": pct(live.latencies, 50), "p99_s": pct(live.latencies, 99),
            "import_written": imported, "import_left": after.ready if after else 0}


# ---- main -----------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--entities", type=int, default=100)
    parser.add_argument("--live-seconds", type=float, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="import-bench-"))
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
              "rows_asked": args.rows, "entities": args.entities}
    ha = HomeAssistantServer(work / "ha", recorder=True, version="2024.3.3")
    influx = InfluxServer(work / "influx").start()
    try:
        influx.create_database(DB)
        ha.start()
        ha.stop()
        end = datetime.now(timezone.utc).replace(microsecond=0)
        began = time.monotonic()
        ids = fill_recorder(ha.config_dir / "home-assistant_v2.db", args.rows, args.entities, end)
        result["fill_seconds"] = time.monotonic() - began
        ha.start()
        start = end - timedelta(hours=24)
        window, per_request = import_defaults()
        ha_alone(ha, ids, start, end, window, per_request)  # warms HA's caches for both
        with_import = write_config(work / "with-import", ha, influx)
        result["import"] = run_import(with_import, ids, start, end)
        result["ha_alone"] = ha_alone(ha, ids, start, end, window, per_request)
        result["import"]["ha_share"] = result["ha_alone"]["seconds"] / result["import"]["seconds"]
        without = write_config(work / "without-import", ha, influx)
        runs = []
        for name, config in (("without", without), ("with", with_import)) * 2:
            runs.append({"import": name, **live_run(config, influx, args.live_seconds)})
            print(json.dumps(runs[-1]), flush=True)
        result["live"] = runs
    finally:
        ha.stop()
        influx.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(markdown(result))
    print(json.dumps({k: v for k, v in result.items()}, default=str))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return 0


def markdown(r: dict) -> str:
    imp, alone = r["import"], r["ha_alone"]
    lines = [f"machine: {r['machine']}", "",
             "| figure | value |", "|---|---|",
             f"| rows recorded (fill, {r['fill_seconds']:.0f} s) | {imp['rows']} of "
             f"{r['entities']} entities over 24 h |",
             f"| HA alone: the same {alone['requests']} requests, answers received | "
             f"{alone['seconds']:.1f} s ({imp['rows'] / alone['seconds']:.0f} rows/s, "
             f"{alone['bytes'] / 2**20:.0f} MiB) |",
             f"| `import history` | {imp['seconds']:.1f} s, **{imp['rows_per_s']:.0f} rows/s**; "
             f"HA's share of the wall time {imp['ha_share']:.0%} |",
             f"| import peak RSS | **{imp['peak_rss_mb']:.1f} MB** (target <= 80 MB) |",
             f"| import.db on disk | {imp['queue_bytes'] / 2**20:.0f} MiB |"]
    for run in r["live"]:
        lines.append(f"| live p50 / p99, {run['import']} import | {run['p50_s']:.3f} / "
                     f"**{run['p99_s']:.3f} s** ({run['seen']}/{run['sent']} seen; import "
                     f"events written meanwhile {run['import_written']}, left "
                     f"{run['import_left']}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
