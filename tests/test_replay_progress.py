"""A replay as an administrator watches it: ``queue status --watch`` shows each queue's drain
rate and the time until it is empty while the real writer drains a backlog into InfluxDB 1.6.7;
the writer logs the replay's start and end (a progress bar when its stderr is a terminal)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading

from ha_ingestor.envelope import mqtt_event
from ha_ingestor.queue import Producer
from tests.support.procs import wait_until

CLI = [sys.executable, "-m", "ha_ingestor"]
BACKLOG = 300_000      # a replay of a few seconds even when the writer drains 100 000/s


def fill(queue_dir, count: int = BACKLOG) -> None:
    producer = Producer(queue_dir, "mqtt", max_bytes=2**31)
    for start in range(0, count, 5000):
        producer.append([mqtt_event(f"replay/{i % 50}", str(i).encode(), 1, False,
                                    1_700_000_000_000_000_000 + i)
                         for i in range(start, min(count, start + 5000))])
    producer.close()


def interrupt(proc) -> None:
    """Ctrl-C, as the administrator stops `--watch` (what it printed is flushed)."""
    proc.send_signal(signal.SIGINT)
    proc.wait(30)


def test_watch_shows_drain_rate_and_time_until_empty(ingestor, influxdb):
    influxdb.create_database("home_assistant")
    ing = ingestor({"influxdb": {"url": influxdb.url, "batch_size": 2000}})
    fill(ing.queue_dir)
    watch = ing.start("queue", "status", "--watch", "0.2", log="watch", env={
        "PYTHONUNBUFFERED": "1"})
    wait_until(lambda: ing.log_path("watch").read_text().count("queue directory") >= 3, 30,
               "refreshes before the writer starts")
    writer = ing.start("write", log="writer")
    wait_until(lambda: _drained(ing), 180, "drained")
    wait_until(lambda: "caught up:" in ing.log_path("writer").read_text(), 30,
               "the writer's next status read (every 5 s)")
    interrupt(watch)
    assert watch.returncode == 0
    writer.terminate()
    writer.wait(30)
    frames = ing.log_path("watch").read_text().split("\n\n")
    row = re.compile(r"^mqtt +(?P<ready>\d+) .*?(?P<rate>-?[\d ]*\d|-) +(?P<eta>\d+ s|\d+ min"
                     r"(?: \d+ s)?|-|not draining)$", re.M)
    rows = [m for m in (row.search(frame) for frame in frames) if m]
    draining = [m for m in rows if int(m["ready"]) > 0 and m["rate"] != "-" and
                int(m["rate"].replace(" ", "")) > 0]
    assert draining, frames[:12]
    assert all(m["eta"].endswith(" s") or m["eta"].endswith(" min") for m in draining)
    assert "drain/s" in frames[0] and "empty in" in frames[0]
    log = ing.log_path("writer").read_text()
    assert re.search(r"\d[\d ]* events behind: replaying", log), log[-2000:]
    assert "caught up:" in log


def _drained(ing) -> bool:
    mqtt = json.loads(ing.run("queue", "status", "--json").stdout)["queues"]["mqtt"]
    return mqtt["ready"] == 0 and mqtt["in_flight"] == 0


def test_the_writer_shows_a_progress_bar_on_a_terminal(ingestor, influxdb):
    influxdb.create_database("home_assistant")
    ing = ingestor({"influxdb": {"url": influxdb.url}})
    fill(ing.queue_dir, 20_000)
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))   # 120 columns
    proc = subprocess.Popen(ing.argv("write"), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=child, env=ing.env(), cwd=ing.workdir)
    os.close(child)
    seen = bytearray()
    reader = threading.Thread(target=_read_all, args=(main, seen), daemon=True)
    reader.start()
    try:
        wait_until(lambda: b"caught up" in seen, 120, "the replay ends")
    finally:
        proc.terminate()
        proc.wait(30)
        reader.join(10)
    text = seen.decode("utf-8", "replace")
    assert re.search(r"replay: +\d+%\|.*\| [\d.k]+/20\.0k \[", text), text[-2000:]
    assert "caught up: 20 000 events behind at most" in text


def _read_all(fd: int, into: bytearray) -> None:
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            return
        if not chunk:
            return
        into += chunk
