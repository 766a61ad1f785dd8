"""One owner per role per queue file, and private files: as an administrator would meet them.

A second ``ha-ingestor write`` or ``collect mqtt`` on the same queue directory exits 4 naming the
process in the way; the first keeps running (its session is never taken over); after a SIGKILL
of the first the kernel has released its lock and the second starts at once. Every file the
queue creates is 0600 in a 0700 directory, whatever the umask.
"""

from __future__ import annotations

import os
import stat
import time

import pytest

from ha_ingestor import queue
from tests.support.fixtures_mosquitto import publish
from tests.support.procs import free_port, kill_process, stop_process, tail, wait_until


def writer_config() -> dict:
    # a relative queue.dir, as in the docs' examples; InfluxDB need not answer for this
    return {"queue": {"dir": "queue"},
            "influxdb": {"url": f"http://127.0.0.1:{free_port()}", "database": "home"}}


def mqtt_config(port: int) -> dict:
    return {"queue": {"dir": "queue"},
            "mqtt": {"enabled": True, "host": "127.0.0.1", "port": port,
                     "client_id": "ownership-test"}}


def exits_with(proc, code: int, timeout: float = 30) -> bool:
    try:
        return proc.wait(timeout) == code
    except Exception:  # noqa: BLE001 - still running: not the expected exit
        return False


def still_running(proc, seconds: float = 2.0) -> bool:
    time.sleep(seconds)
    return proc.poll() is None


def test_second_writer_exits_4_naming_the_first_and_sigkill_frees_the_lock(ingestor):
    ing = ingestor(writer_config())
    first = ing.start("write", log="writer-1")
    wait_until(lambda: (ing.workdir / "queue" / "mqtt.db-consumer.lock").exists(), 20,
               "the first writer holding its role")

    second = ing.start("write", log="writer-2")
    assert exits_with(second, 4), tail(ing.log_path("writer-2"))
    assert (f"queue/mqtt.db is already used by the writer (pid {first.pid})"
            in ing.log_path("writer-2").read_text())
    assert still_running(first), tail(ing.log_path("writer-1"))

    kill_process(first)                       # SIGKILL: no clean-up code runs
    lock = queue.hold_role(ing.workdir / "queue", "mqtt", queue.CONSUMER, "this test")
    lock.release()                            # taken at once: the kernel dropped the lock
    third = ing.start("write", log="writer-3")
    assert still_running(third, 3.0), tail(ing.log_path("writer-3"))
    assert stop_process(third) == 0


def test_second_mqtt_collector_exits_4_and_never_takes_the_session(mosquitto, ingestor):
    ing = ingestor(mqtt_config(mosquitto.port))
    first = ing.start("collect", "mqtt", log="mqtt-1")
    wait_until(lambda: "subscribed to" in ing.log_path("mqtt-1").read_text(), 30, "subscribed")

    second = ing.start("collect", "mqtt", log="mqtt-2")
    assert exits_with(second, 4), tail(ing.log_path("mqtt-2"))
    text = ing.log_path("mqtt-2").read_text()
    assert f"queue/mqtt.db is already used by the mqtt collector (pid {first.pid})" in text
    assert "connected to MQTT broker" not in text      # exited before touching the broker

    publish(mosquitto.port, 200, topic="owned/{i}")
    wait_until(lambda: queue.read_status(ing.workdir / "queue", "mqtt").ready == 200, 30,
               "the first collector stored every message")
    log = ing.log_path("mqtt-1").read_text()
    assert still_running(first, 0.5) and log.count("connected to MQTT broker") == 1, log

    kill_process(first)
    third = ing.start("collect", "mqtt", log="mqtt-3")
    wait_until(lambda: third.poll() is not None or
               "subscribed to" in ing.log_path("mqtt-3").read_text(), 30, "third subscribed")
    assert third.poll() is None, tail(ing.log_path("mqtt-3"))
    assert stop_process(third) == 0


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_queue_files_are_private_whatever_the_umask(mosquitto, ingestor, umask):
    ing = ingestor({**mqtt_config(mosquitto.port),
                    "influxdb": {"url": f"http://127.0.0.1:{free_port()}", "database": "h"}})
    old = os.umask(umask)                     # inherited by the processes started below
    try:
        collector = ing.start("collect", "mqtt", log="mqtt")
        writer = ing.start("write", log="writer")
    finally:
        os.umask(old)
    wait_until(lambda: "subscribed to" in ing.log_path("mqtt").read_text(), 30, "subscribed")
    publish(mosquitto.port, 50, topic="private/{i}")
    queue_dir = ing.workdir / "queue"
    wanted = {"mqtt.db", "mqtt.db-wal", "mqtt.db-shm", "mqtt.db-producer.lock",
              "mqtt.db-consumer.lock", "ha.db-consumer.lock"}
    wait_until(lambda: wanted <= set(os.listdir(queue_dir)), 30, "queue files created")
    wait_until(lambda: queue.read_status(queue_dir, "mqtt").in_flight == 50, 30,
               "the writer took the events (and holds them: InfluxDB is not there)")

    assert stat.S_IMODE(queue_dir.stat().st_mode) == 0o700
    modes = {name: stat.S_IMODE((queue_dir / name).stat().st_mode)
             for name in os.listdir(queue_dir)}
    assert modes == {name: 0o600 for name in modes}, modes
    assert stop_process(collector) == 0 and stop_process(writer) == 0
