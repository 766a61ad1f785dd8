"""Ground truth: what was actually fired, observed independently of the pipeline under test.

- HA: a WebSocket subscriber to ``state_changed`` on HA's bus records (entity_id, time_fired) of
  every change of a ``chaos_`` helper. While HA restarts the subscriber is disconnected; HA's
  recorder (its own SQLite database) is read at the end and fills exactly those gaps.
- MQTT: a persistent-session QoS 1 subscriber records each ``seq`` it was delivered and its topic,
  united with the ``seq``s the broker acknowledged to the load generator.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from datetime import datetime
from pathlib import Path

import paho.mqtt.client as mqtt


def iso_to_us(value: str) -> int:
    """HA's ISO timestamp (``2026-11-27T15:57:48.948479+00:00``) as integer microseconds."""
    dt = datetime.fromisoformat(value)
    whole = int(dt.replace(microsecond=0).timestamp())
    return whole * 1_000_000 + dt.microsecond


class HALedger:
    """State changes seen on HA's bus: {entity_id: {time_fired_us}}; gaps while disconnected."""

    def __init__(self, connect, prefix: str = "chaos_", on_event=None) -> None:
        self.connect = connect
        self.prefix = prefix
        self.on_event = on_event
        self.seen: dict[str, set[int]] = {}
        self.gaps: list[tuple[float, float | None]] = []
        self.events = 0
        self.stopped = threading.Event()
        self.conn = None
        self.thread = threading.Thread(target=self._loop, name="HALedger", daemon=True)

    def start(self, timeout: float = 30.0) -> None:
        self.conn = self._subscribe()
        self.thread.start()

    def _subscribe(self):
        conn = self.connect()
        conn.request({"type": "subscribe_events", "event_type": "state_changed"})
        return conn

    def _loop(self) -> None:
        while not self.stopped.is_set():
            try:
                self._read(self.conn)
            except Exception:
                if self.stopped.is_set():
                    return
                self.gaps.append((time.time(), None))
                self.conn = self._reconnect()
                if self.conn is None:
                    return
                self.gaps[-1] = (self.gaps[-1][0], time.time())

    def _reconnect(self):
        while not self.stopped.is_set():
            try:
                return self._subscribe()
            except Exception:
                time.sleep(0.2)
        return None

    def _read(self, conn) -> None:
        while not self.stopped.is_set():
            frame = conn.recv()
            if frame.get("type") != "event":
                continue
            event = frame["event"]
            entity = event["data"]["entity_id"]
            if entity.split(".", 1)[1].startswith(self.prefix):
                self.events += 1
                self.seen.setdefault(entity, set()).add(iso_to_us(event["time_fired"]))
                if self.on_event:
                    self.on_event(entity, event)

    def stop(self) -> None:
        self.stopped.set()
        if self.conn is not None:
            self.conn.close()
        self.thread.join(5)


def recorder_changes(db: Path, since_us: int, prefix: str = "chaos_") -> dict[str, set[int]]:
    """Every state of a ``prefix`` helper HA's recorder stored since ``since_us``:
    {entity_id: {last_updated_us}}. The recorder writes one row per state_changed event."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        rows = conn.execute(
            "SELECT m.entity_id, s.last_updated_ts FROM states s "
            "JOIN states_meta m ON s.metadata_id = m.metadata_id "
            "WHERE m.entity_id LIKE ? AND s.last_updated_ts >= ?",
            (f"%.{prefix}%", since_us / 1e6)).fetchall()
    finally:
        conn.close()
    found: dict[str, set[int]] = {}
    for entity, ts in rows:
        if entity.split(".", 1)[1].startswith(prefix):
            found.setdefault(entity, set()).add(round(ts * 1_000_000))
    return found


class MqttLedger:
    """Every ``seq`` the broker delivered on the load topics, with its topic (QoS 1, persistent
    session so a broker restart loses nothing for it either)."""

    def __init__(self, port: int, filters: list[str], client_id: str = "chaos-ledger",
                 on_message=None) -> None:
        self.topic_of: dict[int, str] = {}
        self.deliveries = 0
        self.undecodable = 0
        self.on_message = on_message
        self.filters = filters
        self.connected = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv311, clean_session=False)
        self.client.max_inflight_messages_set(1000)
        self.client.reconnect_delay_set(0.2, 2)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect_async("127.0.0.1", port, keepalive=15)

    def start(self, timeout: float = 15.0) -> None:
        self.client.loop_start()
        if not self.connected.wait(timeout):
            raise RuntimeError("MQTT ledger could not subscribe")

    def _on_connect(self, client, _userdata, _flags, reason, _props) -> None:
        if not reason.is_failure:
            client.subscribe([(f, 1) for f in self.filters])
            self.connected.set()

    def _on_message(self, _client, _userdata, msg) -> None:
        self.deliveries += 1
        try:
            seq = int(json.loads(msg.payload)["seq"])
        except (ValueError, KeyError, TypeError):
            self.undecodable += 1
            return
        self.topic_of[seq] = msg.topic
        if self.on_message:
            self.on_message(seq, msg)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
