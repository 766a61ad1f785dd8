"""Steady load: state changes driven through HA's WebSocket API and MQTT messages on
zigbee2mqtt- and Tasmota-like topics, some of them retained (device states a zigbee2mqtt or
Tasmota set-up keeps on the broker: every restart of the collector or the broker is a chance for
the broker to send them again). Every MQTT payload carries a unique ``seq``; every HA call makes
exactly one state change (the next value of a number, a toggle, a counter increment).

The generators only *cause* events; what counts as fired is what the ledger observes.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time

import paho.mqtt.client as mqtt

from tests.chaos.hawire import HAConnection

log = logging.getLogger(__name__)


class Paced:
    """Calls ``step()`` ``rate`` times per second until stopped; never bursts to catch up."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=type(self).__name__, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(15)

    def _loop(self) -> None:
        per_tick = max(1, int(self.rate / 200))     # above 200/s: a few per tick, 200 ticks/s
        interval = per_tick / self.rate
        due = time.monotonic()
        while not self.stopped.is_set():
            now = time.monotonic()
            if due > now:
                self.stopped.wait(due - now)
                continue
            for _ in range(per_tick):
                self.step()
            # after an outage (reconnecting, source down) resume the rate, do not burst
            due = max(due + interval, time.monotonic() - 1.0)

    def step(self) -> None:
        raise NotImplementedError


class HALoad(Paced):
    """One ``call_service`` per tick on a random chaos helper; results are read and counted."""

    def __init__(self, connect, entities: list[str], rate: float, rng: random.Random) -> None:
        super().__init__(rate)
        self.connect = connect
        self.entities = list(entities)
        self.rng = rng
        self.values: dict[str, int] = {}
        self.sent = self.skipped = self.errors = 0
        self.conn: HAConnection | None = None
        self._retry_at = 0.0

    def step(self) -> None:
        conn = self._connection()
        if conn is None:
            self.skipped += 1
            return
        try:
            conn.send(self._call(self.rng.choice(self.entities)))
            self.sent += 1
        except Exception:
            self.skipped += 1
            self._drop(conn)

    def _call(self, entity: str) -> dict:
        domain = entity.split(".")[0]
        if domain == "input_number":
            n = self.values[entity] = self.values.get(entity, 0) + 1
            return {"type": "call_service", "domain": domain, "service": "set_value",
                    "service_data": {"entity_id": entity, "value": (n % 100000) / 100}}
        service = "toggle" if domain == "input_boolean" else "increment"
        return {"type": "call_service", "domain": domain, "service": service,
                "service_data": {"entity_id": entity}}

    def _connection(self) -> HAConnection | None:
        if self.conn is not None or time.monotonic() < self._retry_at:
            return self.conn
        try:
            self.conn = self.connect()
        except Exception:
            self._retry_at = time.monotonic() + 1.0
            return None
        threading.Thread(target=self._read, args=(self.conn,), daemon=True).start()
        return self.conn

    def _read(self, conn: HAConnection) -> None:
        try:
            while True:
                reply = conn.recv()
                if reply.get("type") == "result" and not reply.get("success"):
                    self.errors += 1
        except Exception:
            self._drop(conn)

    def _drop(self, conn: HAConnection) -> None:
        if self.conn is conn:
            self.conn = None
            self._retry_at = time.monotonic() + 1.0
        conn.close()

    def stop(self) -> None:
        super().stop()
        if self.conn is not None:
            self.conn.close()


def mqtt_topics(rng: random.Random, zigbee: int = 16, tasmota: int = 8) -> list[str]:
    rooms = ["kitchen", "hall", "bedroom", "bath", "garage", "office", "attic", "porch"]
    topics = [f"zigbee2mqtt/{rng.choice(rooms)}_sensor_{i}" for i in range(zigbee)]
    topics += [f"tele/tasmota_{i:02d}/SENSOR" for i in range(tasmota)]
    return topics


def retained_topics(rng: random.Random, zigbee: int = 6, tasmota: int = 2) -> list[str]:
    """Topics whose publisher retains every message: zigbee2mqtt devices with ``retain: true``
    and Tasmota state."""
    rooms = ["kitchen", "hall", "bedroom", "bath", "garage", "office"]
    topics = [f"zigbee2mqtt/{rng.choice(rooms)}_blind_{i}" for i in range(zigbee)]
    topics += [f"tele/tasmota_r{i:02d}/STATE" for i in range(tasmota)]
    return topics


def mqtt_payload(topic: str, seq: int, rng: random.Random) -> bytes:
    if topic.startswith("tele/"):
        body = {"Time": time.strftime("%Y-%m-%dT%H:%M:%S"), "seq": seq,
                "ENERGY": {"Power": rng.randint(0, 2500), "Voltage": rng.randint(225, 235),
                           "Current": round(rng.uniform(0, 10), 3)}}
    else:
        body = {"seq": seq, "temperature": round(rng.uniform(15, 30), 2),
                "humidity": round(rng.uniform(30, 70), 1), "battery": rng.randint(10, 100),
                "linkquality": rng.randint(0, 255)}
    return json.dumps(body).encode()


class MqttLoad(Paced):
    """QoS 1 publishes at a steady rate; a message the broker acknowledged is 'accepted'."""

    def __init__(self, port: int, topics: list[str], rate: float, rng: random.Random,
                 client_id: str = "chaos-load", first_seq: int = 1, retain: bool = False) -> None:
        super().__init__(rate)
        self.topics = topics
        self.retain = retain
        self.rng = rng
        self.seq = first_seq - 1
        self.accepted: set[int] = set()
        self.published_at: dict[int, float] = {}
        self.topic_of: dict[int, str] = {}
        self.skipped = 0
        self._mids: dict[int, int] = {}
        self._early: set[int] = set()
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv311, clean_session=True)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(0.2, 2)
        self.client.on_publish = self._on_publish
        self.client.connect_async("127.0.0.1", port, keepalive=15)
        self.client.loop_start()

    def prime(self, timeout: float = 15.0) -> None:
        """One message on every topic, acknowledged by the broker, before the load starts (for
        retained topics: what the collector's first subscription finds on the broker)."""
        deadline = time.monotonic() + timeout
        while not self.client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.05)
        for topic in self.topics:
            self.step(topic)
        while len(self.accepted) < len(self.topics) and time.monotonic() < deadline:
            time.sleep(0.05)
        if len(self.accepted) < len(self.topics):
            raise RuntimeError(f"the broker acknowledged {len(self.accepted)} of "
                               f"{len(self.topics)} first messages")

    def step(self, topic: str | None = None) -> None:
        if not self.client.is_connected():
            self.skipped += 1
            return
        self.seq += 1
        topic = topic or self.rng.choice(self.topics)
        self.published_at[self.seq] = time.time()
        self.topic_of[self.seq] = topic
        # never hold our lock across a paho call: paho runs on_publish under its own mutex,
        # and on_publish takes our lock (that order, both ways, deadlocks)
        info = self.client.publish(topic, mqtt_payload(topic, self.seq, self.rng), qos=1,
                                   retain=self.retain)
        with self._lock:
            if info.mid in self._early:         # the PUBACK beat us here
                self._early.discard(info.mid)
                self.accepted.add(self.seq)
            else:
                self._mids[info.mid] = self.seq

    def _on_publish(self, _client, _userdata, mid, _reason, _props) -> None:
        with self._lock:
            seq = self._mids.pop(mid, None)
            if seq is None:
                self._early.add(mid)
            else:
                self.accepted.add(seq)

    def stop(self) -> None:
        super().stop()
        deadline = time.monotonic() + 10
        while self._mids and time.monotonic() < deadline:
            time.sleep(0.1)
        self.client.disconnect()
        self.client.loop_stop()
