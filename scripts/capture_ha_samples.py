#!/usr/bin/env python3
"""Record real Home Assistant frames into a samples folder (tests/data/ha-samples).

Starts a real HA of the given release (the test config: helpers, a template sensor, one
automation, recorder + history) and a Mosquitto broker with HA's MQTT integration and
``mqtt_statestream``, then records, exactly as HA sent them (pretty-printed, tokens replaced by
"REDACTED", the config folder written as ``/config``): the authentication frames, ``pong``,
error results, subscribe/unsubscribe results (``state_reported`` included),
``supported_features``, ``get_states`` (first 5 entities), ``get_config``, a ``call_service``
result, one ``state_changed`` frame per helper kind, ``call_service`` and
``automation_triggered`` events, a ``history/history_during_period`` answer next to the live
``time_fired`` of the changes it holds, and 40 live statestream messages.

    .venv/bin/python scripts/capture_ha_samples.py --version 2025.4.4 \
        --out tests/data/ha-samples/2025.4.4
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import paho.mqtt.client as mqtt
import websocket

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.fixtures_mosquitto import MosquittoServer  # noqa: E402
from tests.support.real_ha import (HA_VERSIONS, HomeAssistantServer, change_calls,  # noqa: E402
                                   drive)

# HA 2025 publishes every change's state before the timestamps and attributes of any: 40 live
# messages hold all three kinds.
STATESTREAM_MESSAGES = 40
STATESTREAM = ("mqtt_statestream:\n  base_topic: homeassistant_statestream\n"
               "  publish_attributes: true\n  publish_timestamps: true\n")

# One state change per helper kind: (sample name, entity whose state_changed frame is kept,
# the service call that makes it).
CHANGES = [
    ("input_number", "input_number.acc_temp_1",
     ("input_number", "set_value", {"value": 21.3}, "input_number.acc_temp_1")),
    ("template_sensor", "sensor.acc_temperature_average",
     ("input_number", "set_value", {"value": 5.5}, "input_number.acc_temp_2")),
    ("input_boolean", "input_boolean.acc_switch_1",
     ("input_boolean", "toggle", None, "input_boolean.acc_switch_1")),
    ("input_text", "input_text.acc_note",
     ("input_text", "set_value", {"value": "capture"}, "input_text.acc_note")),
    ("input_select", "input_select.acc_mode",
     ("input_select", "select_option", {"option": "away"}, "input_select.acc_mode")),
]


class Recorder:
    """A raw WebSocket connection that keeps every frame HA sends, as text."""

    def __init__(self, url: str):
        self.ws = websocket.create_connection(url, timeout=10)
        self.next_id = 1

    def recv(self, timeout: float = 10) -> dict | list | None:
        self.ws.settimeout(timeout)
        try:
            return json.loads(self.ws.recv())
        except websocket.WebSocketTimeoutException:
            return None

    def send(self, message: dict) -> int:
        if message.get("type") != "auth":
            message = {"id": self.next_id, **message}
            self.next_id += 1
        self.ws.send(json.dumps(message))
        return message.get("id", 0)

    def answer(self, message: dict, events: list | None = None) -> dict:
        """Send a command; the frame answering it (events meanwhile go to ``events``)."""
        msg_id = self.send(message)
        while True:
            frame = self.recv()
            if frame is None:
                raise TimeoutError(f"no answer to {message}")
            if frame.get("id") == msg_id and frame.get("type") != "event":
                return frame
            if events is not None:
                events.append(frame)

    def drain(self, seconds: float) -> list[dict]:
        frames, deadline = [], time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            frame = self.recv(left)
            if frame is not None:
                frames.append(frame)
        return frames


CONFIG_DIRS: list[str] = []   # the temporary config folder is written as HA OS shows it: /config


def write(out: Path, name: str, frame) -> None:
    text = json.dumps(frame, indent=2, ensure_ascii=False) + "\n"
    for folder in CONFIG_DIRS:
        text = text.replace(folder, "/config")
    (out / f"{name}.json").write_text(text)


def call(conn: Recorder, domain: str, service: str, data: dict | None, entity_id: str,
         events: list) -> dict:
    message = {"type": "call_service", "domain": domain, "service": service,
               "target": {"entity_id": entity_id}}
    if data:
        message["service_data"] = data
    return conn.answer(message, events)


def record_session(ha: HomeAssistantServer, out: Path) -> None:
    conn = Recorder(ha.ws_url)
    write(out, "auth_required", conn.recv())
    write(out, "client_auth_message", {"type": "auth", "access_token": "REDACTED"})
    conn.send({"type": "auth", "access_token": ha.token})
    write(out, "auth_ok", conn.recv())
    write(out, "pong", conn.answer({"type": "ping"}))
    write(out, "result_error_unknown_command", conn.answer({"type": "no_such_command"}))
    write(out, "result_error_invalid_format",
          conn.answer({"type": "subscribe_events", "event_type": 42}))
    write(out, "result_subscribe_events",
          conn.answer({"type": "subscribe_events", "event_type": "state_changed"}))
    write(out, "result_unsubscribe_events",
          conn.answer({"type": "unsubscribe_events", "subscription": conn.next_id - 1}))
    write(out, "result_subscribe_events_state_reported",
          conn.answer({"type": "subscribe_events", "event_type": "state_reported"}))
    write(out, "result_subscribe_events_all", conn.answer({"type": "subscribe_events"}))
    states = conn.answer({"type": "get_states"})
    states["result"] = sorted(states["result"], key=lambda s: s["entity_id"])[:5]
    write(out, "result_get_states", states)
    write(out, "result_get_config", conn.answer({"type": "get_config"}))
    record_events(conn, out)
    record_history(conn, out)
    conn.ws.close()
    coalescing = Recorder(ha.ws_url)   # frames may be JSON arrays after this: its own connection
    coalescing.recv()
    coalescing.send({"type": "auth", "access_token": ha.token})
    coalescing.recv()
    write(out, "result_supported_features", coalescing.answer(
        {"type": "supported_features", "features": {"coalesce_messages": 1}}))
    coalescing.ws.close()
    bad = Recorder(ha.ws_url)
    bad.recv()
    bad.send({"type": "auth", "access_token": "not-a-valid-token"})
    write(out, "auth_invalid", bad.recv())
    bad.ws.close()


def flatten(frames: list) -> list[dict]:
    """Coalesced frames (JSON arrays) as single messages."""
    return [m for f in frames for m in (f if isinstance(f, list) else [f])]


def record_events(conn: Recorder, out: Path) -> None:
    frames: list = []
    for name, entity_id, (domain, service, data, target) in CHANGES:
        frames.clear()
        result = call(conn, domain, service, data, target, frames)
        frames += conn.drain(1.0)
        events = [m for m in flatten(frames) if m.get("type") == "event"]
        write(out, f"event_state_changed_{name}", next(
            m for m in events if m["event"]["event_type"] == "state_changed"
            and m["event"]["data"]["entity_id"] == entity_id))
        if name == "input_boolean":
            write(out, "result_call_service", result)
            pick = {e["event"]["event_type"]: e for e in events}
            write(out, "event_call_service", pick["call_service"])
            write(out, "event_automation_triggered", pick["automation_triggered"])
            changed = {e["event"]["data"].get("entity_id"): e for e in events
                       if e["event"]["event_type"] == "state_changed"}
            write(out, "event_state_changed_counter", changed["counter.acc_counter"])
            write(out, "event_state_changed_automation",
                  changed["automation.acc_switch_1_counts"])


def record_history(conn: Recorder, out: Path) -> None:
    """Ten changes of one entity, live and as the recorder answers for them."""
    entity_id = "input_number.acc_temp_2"
    start = datetime.now(timezone.utc).isoformat()
    frames: list = []
    for value in range(10):
        call(conn, "input_number", "set_value", {"value": 11.1 + value}, entity_id, frames)
    frames += conn.drain(2.5)          # the recorder commits every second
    live = [m["event"]["time_fired"] for m in flatten(frames) if m.get("type") == "event"
            and m["event"]["event_type"] == "state_changed"
            and m["event"]["data"]["entity_id"] == entity_id]
    history = conn.answer({"type": "history/history_during_period", "start_time": start,
                           "entity_ids": [entity_id], "include_start_time_state": False,
                           "significant_changes_only": False, "no_attributes": False,
                           "minimal_response": False})
    write(out, "result_history_during_period", history)
    write(out, "history_live_time_fired", {"entity_id": entity_id, "time_fired": live})


def record_statestream(ha: HomeAssistantServer, broker_port: int, out: Path) -> None:
    got: list[str] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_message = lambda _c, _u, msg: got.append(
        f"{msg.topic}\t{msg.payload.decode()}") if not msg.retain else None
    client.connect("127.0.0.1", broker_port)
    client.subscribe("homeassistant_statestream/#", qos=1)
    client.loop_start()
    time.sleep(1.0)                    # the retained messages first
    with ha.client() as driver:
        drive(driver, change_calls(6, start=1))
    deadline = time.monotonic() + 10
    while len(got) < STATESTREAM_MESSAGES and time.monotonic() < deadline:
        time.sleep(0.1)
    client.loop_stop()
    client.disconnect()
    (out / "mqtt_statestream.txt").write_text("\n".join(got[:STATESTREAM_MESSAGES]) + "\n")


def capture(version: str, out: Path, workdir: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    broker = MosquittoServer(binary, workdir / "mosquitto").start()
    ha = HomeAssistantServer(workdir / "ha", version=version, extra_yaml=STATESTREAM)
    CONFIG_DIRS.append(str(ha.config_dir))
    try:
        ha.start()
        ha.configure_mqtt(broker.port)
        ha.restart()                   # statestream sets up only once the MQTT entry exists
        record_session(ha, out)
        record_statestream(ha, broker.port, out)
    finally:
        ha.stop()
        broker.stop()
    print(f"Home Assistant {version}: {len(list(out.iterdir()))} samples in {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", choices=HA_VERSIONS, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ha-capture-") as workdir:
        capture(args.version, args.out, Path(workdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
