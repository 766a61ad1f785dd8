#!/usr/bin/env python3
"""``make demo``: the whole pipeline on this machine, from nothing to rows in InfluxDB.

1. Installs what is missing: the Debian packages ``mosquitto`` and ``influxdb`` (with apt-get, as
   root) and a real Home Assistant in its own virtual environment (first run only: a few
   minutes). ``make`` has already created the project's own ``.venv``. The release is the newest
   tested one this machine has a Python for: 2025.4.4 where Python 3.13 is found (pyenv's
   included), otherwise 2024.3.3 on Python 3.11 (a plain Debian 12); ``--ha-version`` picks one.
2. Starts Mosquitto, InfluxDB 1.x and Home Assistant on free loopback ports, with all their data
   in ``./.demo/``, writes an ``ha-ingestor`` config there and starts ``ha-ingestor run``.
3. Generates activity for a minute: state changes through HA's WebSocket API, and MQTT messages on
   zigbee2mqtt- and Tasmota-like topics.
4. Prints ``ha-ingestor queue status`` and what landed in InfluxDB per measurement, then stops
   everything it started (by pid).

    .venv/bin/python scripts/demo.py [--seconds 60] [--ha-version V] [--fake-ha] [--keep-running]
                                     [--workdir DIR]

``--fake-ha`` uses the project's HA test server instead of a real HA (starts in a second).
Exits 1 when no HA or no MQTT data reached InfluxDB.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from tests.support.ha_venv import HA_VERSIONS, find_python, release  # noqa: E402

DEMO_DIR = ROOT / ".demo"
DATABASE = "home_assistant"
DEBIAN_PACKAGES = {"mosquitto": "mosquitto", "influxd": "influxdb"}
MQTT_TAG = "topic"       # every MQTT point carries it (schema.mqtt.topic_tag)


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


# ---- 1. what is missing -------------------------------------------------------------------

def find_binary(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for p in (f"/usr/bin/{name}", f"/usr/sbin/{name}") if os.access(p, os.X_OK)), None)


def ensure_debian_packages() -> None:
    missing = [pkg for binary, pkg in DEBIAN_PACKAGES.items() if not find_binary(binary)]
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"[demo] missing Debian packages {', '.join(missing)}: run as root, or "
                 f"`sudo apt-get install {' '.join(missing)}` first")
    say(f"installing Debian packages: {', '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
                   check=True, env=env)


def pick_ha_version(asked: str | None) -> str:
    """The release asked for, else the newest tested release this machine has a Python for (the
    one closest to what users run); the oldest when none is found (its install says why)."""
    if asked:
        return asked
    runnable = [v for v in HA_VERSIONS if find_python(release(v).python)]
    return runnable[-1] if runnable else HA_VERSIONS[0]


def ensure_real_ha(version: str) -> None:
    from tests.support.real_ha import ensure_ha_venv, ha_venv_dir
    venv = ha_venv_dir(version)
    if not (venv / "bin" / "hass").exists():
        say(f"installing Home Assistant {version} into {venv} (first run only, a few minutes)")
    ensure_ha_venv(version=version)


# ---- 2. servers -----------------------------------------------------------------------------

class Stack:
    """Everything the demo started, stopped in reverse order (each by its own pid)."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.stops: list[tuple[str, object]] = []

    def started(self, name: str, stop) -> None:
        self.stops.append((name, stop))

    def stop_all(self) -> None:
        for name, stop in reversed(self.stops):
            try:
                stop()
            except Exception as exc:   # keep stopping the others
                say(f"stopping {name}: {exc}")
        self.stops.clear()


def start_mosquitto(stack: Stack):
    from tests.support.fixtures_mosquitto import MosquittoServer
    server = MosquittoServer(find_binary("mosquitto"), stack.workdir / "mosquitto").start()
    stack.started("mosquitto", server.stop)
    say(f"Mosquitto on 127.0.0.1:{server.port} (pid {server.pid})")
    return server


def start_influxdb(stack: Stack):
    from tests.support.fixtures_influx import InfluxServer
    server = InfluxServer(stack.workdir / "influxdb").start()
    stack.started("influxdb", server.stop)
    server.create_database(DATABASE)
    say(f"InfluxDB on {server.url} (pid {server.proc.pid}), database {DATABASE}")
    return server


class HomeAssistant:
    """The real HA or the project's HA test server, behind the two things the demo needs: a
    WebSocket URL with a token, and a way to change states."""

    def __init__(self, stack: Stack, fake: bool, version: str):
        self.fake = fake
        self.version = version
        if fake:
            self._start_fake(stack)
        else:
            self._start_real(stack)

    def _start_real(self, stack: Stack) -> None:
        from tests.support.real_ha import HomeAssistantServer
        say(f"starting Home Assistant {self.version} (about 20 s)")
        self.server = HomeAssistantServer(stack.workdir / "homeassistant",
                                          version=self.version).start()
        stack.started("homeassistant", self.server.stop)
        self.ws_url, self.token = self.server.ws_url, self.server.token
        say(f"Home Assistant on {self.server.url} (pid {self.server.pid})")

    def _start_fake(self, stack: Stack) -> None:
        from tests.support.ha_test_server import HATestServer
        self.server = HATestServer(token="demo-token", ha_version=self.version).start()
        stack.started("ha test server", self.server.stop)
        self.ws_url, self.token = self.server.url, self.server.token
        say(f"HA test server on {self.ws_url} (frames of HA {self.version})")

    def activity(self, stop: threading.Event, counts: dict) -> None:
        """State changes until ``stop``: about 5 service calls a second on a real HA."""
        if self.fake:
            return self._fake_activity(stop, counts)
        with self.server.client() as client:
            while not stop.is_set():
                domain, service, data, entity = random_service_call()
                client.call_service(domain, service, data=data, target={"entity_id": entity})
                counts["ha"] += 1
                stop.wait(0.2)

    def _fake_activity(self, stop: threading.Event, counts: dict) -> None:
        while not stop.is_set():
            entity = random.choice(("sensor.demo_temperature", "sensor.demo_humidity"))
            value = round(random.uniform(18, 25) if "temp" in entity else random.uniform(30, 60),
                          1)
            self.server.set_state(entity, str(value),
                                  {"unit_of_measurement": "°C" if "temp" in entity else "%",
                                   "friendly_name": entity})
            counts["ha"] += 1
            stop.wait(0.2)


def random_service_call() -> tuple[str, str, dict | None, str]:
    choice = random.randrange(6)
    if choice == 0:
        return "input_boolean", "toggle", None, "input_boolean.acc_switch_1"
    if choice == 1:
        return "input_select", "select_next", None, "input_select.acc_mode"
    if choice == 2:
        return ("input_number", "set_value", {"value": random.randint(30, 70)},
                "input_number.acc_humidity")
    if choice == 3:
        return "counter", "increment", None, "counter.acc_counter"
    entity = random.choice(("input_number.acc_temp_1", "input_number.acc_temp_2"))
    return "input_number", "set_value", {"value": round(random.uniform(17, 24), 1)}, entity


# ---- MQTT devices ---------------------------------------------------------------------------

ZIGBEE = ("living_room_sensor", "bedroom_sensor", "kitchen_plug")
TASMOTA = ("washing_machine", "dryer")


def mqtt_activity(port: int, stop: threading.Event, counts: dict) -> None:
    """zigbee2mqtt and Tasmota-like devices, about 20 messages a second, QoS 1."""
    import paho.mqtt.client as mqtt
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ha-ingestor-demo-devices")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        publish_online(client)
        while not stop.is_set():
            for topic, payload, retain in device_messages():
                client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)
                counts["mqtt"] += 1
            stop.wait(0.25)
    finally:
        client.loop_stop()
        client.disconnect()


def publish_online(client) -> None:
    client.publish("zigbee2mqtt/bridge/state", json.dumps({"state": "online"}), qos=1,
                   retain=True)
    for device in TASMOTA:
        client.publish(f"tele/{device}/LWT", "Online", qos=1, retain=True)


def device_messages() -> list[tuple[str, str, bool]]:
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    messages = []
    for device in ZIGBEE:
        if device.endswith("plug"):
            body = {"state": random.choice(("ON", "OFF")), "power": round(random.uniform(0, 60), 1),
                    "energy": round(random.uniform(10, 11), 3), "linkquality": random.randint(40, 200)}
        else:
            body = {"temperature": round(random.uniform(18, 24), 2),
                    "humidity": round(random.uniform(35, 60), 1),
                    "battery": random.randint(80, 100), "linkquality": random.randint(40, 200)}
        messages.append((f"zigbee2mqtt/{device}", json.dumps(body), False))
    for device in TASMOTA:
        energy = {"Time": now, "ENERGY": {"Total": round(random.uniform(100, 101), 3),
                                          "Power": random.randint(0, 2200),
                                          "Voltage": random.randint(228, 234),
                                          "Current": round(random.uniform(0, 9), 3)}}
        messages.append((f"tele/{device}/SENSOR", json.dumps(energy), False))
        messages.append((f"stat/{device}/POWER", random.choice(("ON", "OFF")), False))
    return messages


# ---- the ingestor ---------------------------------------------------------------------------

def free_port() -> int:
    from tests.support.procs import free_port as _free_port
    return _free_port()


def write_config(workdir: Path, mosquitto, influx, ha: HomeAssistant,
                 metrics_influxdb: dict | None = None) -> tuple[Path, dict]:
    ports = {"run": free_port(), "mqtt": free_port(), "ha": free_port(), "writer": free_port()}
    config = {
        "queue": {"dir": str(workdir / "queue")},
        "mqtt": {"host": "127.0.0.1", "port": mosquitto.port, "client_id": "ha-ingestor-demo",
                 "topics": ["#"], "qos": 1},
        "homeassistant": {"url": ha.ws_url, "token": ha.token},
        "influxdb": {"api": "v1", "url": influx.url, "database": DATABASE,
                     "flush_interval": "500ms"},
        "schema": {"mqtt": {"presets": ["zigbee2mqtt", "tasmota"]}},
        "metrics": {"host": "127.0.0.1", "ports": ports,
                    "influxdb": metrics_influxdb or {"enabled": False}},
        "run": {"shutdown_timeout": "20s"},
    }
    path = workdir / "ha-ingestor.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, ports


def ingestor_cmd(config_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "ha_ingestor", "--config", str(config_path), *args]


def clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("HA_INGESTOR_")}


def start_ingestor(stack: Stack, config_path: Path, ports: dict) -> subprocess.Popen:
    log = open(stack.workdir / "ha-ingestor.log", "ab")
    proc = subprocess.Popen(ingestor_cmd(config_path, "run"), stdout=log,
                            stderr=subprocess.STDOUT, cwd=stack.workdir, env=clean_env(),
                            start_new_session=True)
    stack.started("ha-ingestor run", lambda: stop_ingestor(proc))
    say(f"ha-ingestor run (pid {proc.pid}), log in {stack.workdir / 'ha-ingestor.log'}")
    wait_ready(proc, ports, stack.workdir / "ha-ingestor.log")
    return proc


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def wait_ready(proc: subprocess.Popen, ports: dict, log_path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    components = ("mqtt", "ha", "writer")
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ha-ingestor run exited with {proc.returncode}:\n"
                               f"{log_tail(log_path)}")
        if all(ready(ports[c]) for c in components):
            say("every component is ready (/readyz 200): " + ", ".join(components))
            return
        time.sleep(0.2)
    raise RuntimeError(f"components not ready after {timeout:.0f} s:\n{log_tail(log_path)}")


def stop_ingestor(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        code = proc.wait(40)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        code = proc.wait(10)
    say(f"ha-ingestor run stopped with exit code {code}")


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


# ---- 3. activity ----------------------------------------------------------------------------

def generate_activity(seconds: float, ha: HomeAssistant, mqtt_port: int) -> dict:
    counts = {"ha": 0, "mqtt": 0}
    stop = threading.Event()
    errors: list[BaseException] = []

    def guarded(target, *args):
        try:
            target(*args)
        except BaseException as exc:   # report it on the main thread
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=guarded, args=(ha.activity, stop, counts), daemon=True),
               threading.Thread(target=guarded, args=(mqtt_activity, mqtt_port, stop, counts),
                                daemon=True)]
    for thread in threads:
        thread.start()
    say(f"generating activity for {seconds:.0f} s")
    ends = time.monotonic() + seconds
    while time.monotonic() < ends and not stop.is_set():
        stop.wait(min(10.0, max(0.0, ends - time.monotonic())))
        say(f"  {counts['ha']} HA state changes, {counts['mqtt']} MQTT messages so far")
    stop.set()
    for thread in threads:
        thread.join(30)
    if errors:
        raise RuntimeError(f"activity generator failed: {errors[0]!r}") from errors[0]
    return counts


def wait_drained(config_path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = queue_status_json(config_path)
        if all(q["ready"] == 0 and q["in_flight"] == 0 for q in status["queues"].values()):
            return
        time.sleep(0.5)
    say(f"the queue did not drain within {timeout:.0f} s")


def queue_status_json(config_path: Path) -> dict:
    result = subprocess.run(ingestor_cmd(config_path, "queue", "status", "--json"),
                            capture_output=True, text=True, env=clean_env(), check=True)
    return json.loads(result.stdout)


# ---- 4. what landed -------------------------------------------------------------------------

def measurement_table(influx) -> list[tuple[str, str, int]]:
    """(measurement, source, points) for every measurement in the database."""
    rows = []
    for row in influx.query("SHOW MEASUREMENTS", DATABASE):
        name = row["name"]
        tags = {r["tagKey"] for r in influx.query(f'SHOW TAG KEYS FROM "{name}"', DATABASE)}
        source = "mqtt" if MQTT_TAG in tags else "ha"
        rows.append((name, source, count_points(influx, name)))
    return rows


def count_points(influx, measurement: str) -> int:
    """Points in a measurement: per series, the count of its most frequent field."""
    per_series = influx.query(f'SELECT count(*) FROM "{measurement}" GROUP BY *', DATABASE)
    return sum(max((v for k, v in row.items() if k.startswith("count") and v), default=0)
               for row in per_series)


def print_table(rows: list[tuple[str, str, int]]) -> None:
    width = max([len(r[0]) for r in rows] + [11])
    print(f"\n{'measurement':<{width}}  {'source':<6}  {'points':>8}")
    print(f"{'-' * width}  {'-' * 6}  {'-' * 8}")
    for name, source, points in sorted(rows, key=lambda r: (r[1], r[0])):
        print(f"{name:<{width}}  {source:<6}  {points:>8}")
    for source in ("ha", "mqtt"):
        total = sum(r[2] for r in rows if r[1] == source)
        print(f"{'total ' + source:<{width}}  {'':<6}  {total:>8}")
    print()


# ---- main -----------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run HA Ingestor end to end on this machine.")
    parser.add_argument("--seconds", type=float, default=60, help="activity duration (60)")
    parser.add_argument("--ha-version", choices=HA_VERSIONS, default=None,
                        help="the Home Assistant release (default: the newest this machine "
                        "has a Python for)")
    parser.add_argument("--fake-ha", action="store_true",
                        help="use the project's HA test server instead of a real HA")
    parser.add_argument("--keep-running", action="store_true",
                        help="leave everything running until Ctrl-C after the report")
    parser.add_argument("--workdir", type=Path, default=DEMO_DIR,
                        help="where the servers keep their data (./.demo, emptied first)")
    return parser.parse_args()


def run_demo(args: argparse.Namespace, stack: Stack) -> int:
    ensure_debian_packages()
    version = pick_ha_version(args.ha_version)
    if not args.fake_ha:
        ensure_real_ha(version)
    mosquitto = start_mosquitto(stack)
    influx = start_influxdb(stack)
    ha = HomeAssistant(stack, args.fake_ha, version)
    config_path, ports = write_config(stack.workdir, mosquitto, influx, ha)
    start_ingestor(stack, config_path, ports)
    counts = generate_activity(args.seconds, ha, mosquitto.port)
    say(f"made {counts['ha']} HA state changes and sent {counts['mqtt']} MQTT messages; "
        f"waiting for the queue to drain")
    wait_drained(config_path)
    print("\n$ ha-ingestor queue status", flush=True)
    subprocess.run(ingestor_cmd(config_path, "queue", "status"), env=clean_env())
    rows = measurement_table(influx)
    print_table(rows)
    if args.keep_running:
        say(f"everything keeps running; InfluxDB at {influx.url}, database {DATABASE}. "
            f"Ctrl-C stops it")
        while True:
            time.sleep(3600)
    empty = [s for s in ("ha", "mqtt") if not any(r[2] for r in rows if r[1] == s)]
    if empty:
        say(f"FAILED: no {' and no '.join(empty)} points in InfluxDB; see "
            f"{stack.workdir / 'ha-ingestor.log'}")
        return 1
    say("OK: HA and MQTT data reached InfluxDB")
    return 0


def main() -> int:
    args = parse_args()
    workdir = args.workdir.resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    stack = Stack(workdir)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return run_demo(args, stack)
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    except Exception as exc:
        say(f"FAILED: {exc}")
        return 1
    finally:
        say("stopping everything the demo started")
        stack.stop_all()


if __name__ == "__main__":
    sys.exit(main())
