"""A full filesystem under the queue, below ``queue.max_bytes``: nothing exits, nothing spins,
nothing is corrupted, and everything the collectors acknowledged lands exactly once.

The queue lives on a small tmpfs mounted by the test (root only: skipped elsewhere, a failure
under CI=true, where the run is root). Real Mosquitto, InfluxDB, the MQTT and HA collectors and
the writer as processes; the project's HA test server feeds the HA collector (it records every
state change it fires, so drops can be accounted for).

1. The writer is stopped; MQTT messages arrive faster than the filesystem holds. The MQTT
   collector stops at the headroom kept for the writer and holds (the broker keeps the rest),
   without spinning.
2. The writer starts on that full disk: taking and acknowledging use the headroom, so it drains,
   the collector resumes, and every message lands.
3. Another file takes the last free byte. Whatever can still move moves (the HA collector holds
   its events in memory, then drops by policy and counts); then every process idles at < 5 % of
   a core, still running.
4. The file is deleted: everything lands exactly once (every HA state change fired is written or
   counted as dropped), and the queue files pass quick_check.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from collections import Counter
from datetime import datetime, timezone

import pytest

from tests.chaos.procfs import cpu_seconds
from tests.support.fixtures_homeassistant import collector_overrides, metric, scrape
from tests.support.fixtures_mosquitto import publish
from tests.support.ha_test_server import HATestServer
from tests.support.procs import in_ci, stop_process, tail, wait_until

FS_SIZE = "24m"
PAYLOAD_PAD = "x" * 2000
DB = "home"
MAX_CPU = 0.05            # share of one core


@pytest.fixture
def small_fs(tmp_path):
    """A 24 MiB tmpfs, unmounted at the end (after the processes of the test stopped)."""
    mount = tmp_path / "fs"
    mount.mkdir()
    why = None
    if os.geteuid() != 0:
        why = "mounting a tmpfs needs root"
    else:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE}", "tmpfs",
                               str(mount)], capture_output=True, text=True)
        why = done.stderr.strip() if done.returncode else None
    if why:
        if in_ci():
            pytest.fail(f"cannot mount a tmpfs for the full-disk test: {why}", pytrace=False)
        pytest.skip(f"cannot mount a tmpfs: {why}")
    yield mount
    if subprocess.run(["umount", str(mount)], capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(path) -> int:
    """Write zeros to ``path`` until the filesystem refuses; returns the bytes written."""
    written = 0
    with open(path, "wb", buffering=0) as out:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    written += out.write(b"\0" * size)
            except OSError:
                pass
    return written


def seqs_in_influx(influxdb) -> Counter:
    return Counter(int(row["seq"]) for row in influxdb.query('SELECT "seq" FROM "mqtt"', DB))


def ha_points(influxdb) -> set[tuple[str, int]]:
    rows = influxdb.query("SELECT * FROM /.*/", DB)
    return {(f"{row['domain']}.{row['entity_id']}", row["time"]) for row in rows
            if row["_measurement"] != "mqtt" and row.get("entity_id")}


def ns(iso: str) -> int:
    moment = datetime.fromisoformat(iso)
    return (moment - datetime(1970, 1, 1, tzinfo=timezone.utc)) // (
        datetime.resolution) * 1000


def ha_dropped(port: int) -> float:
    return metric(scrape(port), "ha_ingestor_events_dropped_total", source="ha",
                  reason="drop_newest")


def cpu_shares(procs: dict, seconds: float) -> dict[str, float]:
    before = {name: cpu_seconds(p.pid) for name, p in procs.items()}
    time.sleep(seconds)
    return {name: round((cpu_seconds(p.pid) - before[name]) / seconds, 3)
            for name, p in procs.items()}


def quiet(influxdb, seconds: float = 3.0) -> bool:
    """No new point for ``seconds``."""
    first = len(influxdb.query('SELECT "seq" FROM "mqtt"', DB))
    time.sleep(seconds)
    return len(influxdb.query('SELECT "seq" FROM "mqtt"', DB)) == first


def publish_range(port: int, start: int, count: int) -> None:
    payloads = [json.dumps({"seq": i, "pad": PAYLOAD_PAD}).encode()
                for i in range(start, start + count)]
    publish(port, count, topic="full/test", payloads=payloads)


def test_full_disk_no_exit_no_spin_no_corruption_and_everything_lands_once(
        small_fs, influxdb, mosquitto, ingestor):
    influxdb.create_database(DB)
    server = HATestServer(token="test-token").start()
    try:
        run_scenario(small_fs, influxdb, mosquitto, ingestor, server)
    finally:
        server.stop()


def run_scenario(fs, influxdb, mosquitto, ingestor, server) -> None:
    ing = ingestor({
        "queue": {"dir": str(fs / "queue"), "max_bytes": "64MiB"},     # more than the disk
        "mqtt": {"enabled": True, "host": "127.0.0.1", "port": mosquitto.port,
                 "client_id": "full-disk"},
        **collector_overrides(server.url, server.token, handoff_max_events=1000),
        "influxdb": {"url": influxdb.url, "database": DB, "flush_interval": "100ms"}})
    procs = {"mqtt": ing.start("collect", "mqtt", log="mqtt"),
             "ha": ing.start("collect", "ha", log="ha")}
    wait_until(lambda: "subscribed to" in ing.log_path("mqtt").read_text(), 30, "subscribed")
    server.wait_for_subscribers(1)
    fired_from = len(server.fired_states)
    server.set_rate(20)

    # 1. the writer is stopped: the collectors fill the filesystem up to the headroom
    publish_range(mosquitto.port, 0, 10_000)             # 20 MB into 24 MiB
    wait_until(lambda: "queue full" in ing.log_path("mqtt").read_text(), 60, "MQTT queue full")
    shares = cpu_shares(procs, 6.0)
    print(f"held at the headroom, CPU share of a core: {shares}")
    assert all(share < MAX_CPU for share in shares.values()), shares

    # 2. the writer starts on the full disk and drains; the collectors resume
    procs["writer"] = ing.start("write", log="writer")
    wait_until(lambda: sum(seqs_in_influx(influxdb).values()) >= 10_000, 120,
               "every message written")

    # 3. the last free byte taken by another file: no exit, no spin
    fill(fs / "filler")
    publish_range(mosquitto.port, 10_000, 3_000)
    wait_until(lambda: "filesystem is full" in ing.log_path("ha").read_text(), 30, "HA held")
    wait_until(lambda: quiet(influxdb), 60, "nothing moving")
    shares = cpu_shares(procs, 8.0)
    print(f"no free byte, CPU share of a core: {shares}")
    assert all(share < MAX_CPU for share in shares.values()), shares
    for name, proc in procs.items():
        assert proc.poll() is None, f"{name} exited:\n{tail(ing.log_path(name))}"

    # 4. space again: everything lands exactly once
    (fs / "filler").unlink()
    wait_until(lambda: sum(seqs_in_influx(influxdb).values()) >= 13_000, 120,
               "every message written after the space came back")
    server.set_rate(0)
    seqs = seqs_in_influx(influxdb)
    assert set(seqs) == set(range(13_000)) and max(seqs.values()) == 1, "lost or doubled"
    fired = {(entity, ns(when)) for entity, when in server.fired_states[fired_from:]}
    ha_port = ing.config["metrics"]["ports"]["ha"]
    wait_until(lambda: len(fired & ha_points(influxdb)) + ha_dropped(ha_port) == len(fired), 60,
               "every HA state change written or counted as dropped")
    landed, dropped = fired & ha_points(influxdb), ha_dropped(ha_port)
    print(f"HA: {len(fired)} state changes fired, {len(landed)} written, {dropped:.0f} dropped")
    assert len(landed) + dropped == len(fired), (len(landed), dropped, len(fired))
    for name, proc in procs.items():
        assert stop_process(proc, timeout=30) == 0, tail(ing.log_path(name))
    for source in ("mqtt", "ha"):
        with sqlite3.connect(fs / "queue" / f"{source}.db") as conn:
            assert conn.execute("PRAGMA quick_check").fetchone() == ("ok",)
