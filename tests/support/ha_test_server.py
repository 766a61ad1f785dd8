"""The project's own Home Assistant WebSocket test server: HA's protocol, faults on demand.

A real HA (tests/support/real_ha.py) is used wherever it can show the behaviour; this server is for
what a real HA cannot be made to do when a test wants it: drop every connection mid-stream, freeze
(stop answering pings with the TCP connection open), reject the token, fire 50 000 events in a
burst, coalesce messages into JSON arrays, send malformed JSON or unknown message types, take
``subscribe_delay`` seconds to register and answer a subscription (as a busy HA can).

It speaks the frames captured from real HA releases (``tests/data/ha-samples``): as HA 2025.4.4
by default (what users run; every state carries ``last_reported``, and times are ``time.time()``
floats, so the recorder's ``lu`` has digits below the microsecond that the ISO times in the
events round away), or as HA 2024.3.3 with ``ha_version="2024.3.3"``. The frames:
``auth_required`` -> ``auth`` -> ``auth_ok`` | ``auth_invalid`` (then closes), ``supported_features``
(``coalesce_messages``), ``subscribe_events`` (all types, or one; all types needs an admin),
``unsubscribe_events``, ``get_states``, ``history/history_during_period`` (HA's compressed form:
``s``, ``a``, ``lu``, ``lc`` only when it differs), ``ping``/``pong``, ``id_reuse`` for ids that do
not increase, ``unknown_command`` for the rest. Every fired ``state_changed`` is also "recorded"
(optionally with a commit lag like HA's recorder ``commit_interval``) for the history command.

In process::

    server = HATestServer(token="t", rate=200).start()
    server.url, server.token
    server.burst(50_000); server.drop_connections(); server.freeze(); server.unfreeze()
    server.send_raw("{not json"); server.send_message({"type": "mystery"})
    server.stop()

As a process (the demo and the benchmarks)::

    python -m tests.support.ha_test_server --port 8124 --token T --rate 200

The server is a minimal RFC 6455 implementation on asyncio (text, close, ping/pong frames,
fragmented client messages); the project does not depend on a WebSocket server library.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import signal
import ssl
import struct
import threading
import time
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timezone

from tests.support.ha_venv import HA_VERSIONS

DEFAULT_PROTOCOL = HA_VERSIONS[-1]      # the newest tested release

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# Event types a non-admin user may subscribe to (HA's SUBSCRIBE_ALLOWLIST), per release.
_NON_ADMIN_2024_3 = {"area_registry_updated", "component_loaded", "core_config_updated",
                     "device_registry_updated", "entity_registry_updated",
                     "repairs_issue_registry_updated", "lovelace_updated", "panels_updated",
                     "recorder_5min_statistics_generated",
                     "recorder_hourly_statistics_generated", "service_registered",
                     "service_removed", "shopping_list_updated", "state_changed",
                     "themes_updated"}
NON_ADMIN_EVENT_TYPES = {
    "2024.3.3": _NON_ADMIN_2024_3,
    "2025.4.4": _NON_ADMIN_2024_3 | {"category_registry_updated", "floor_registry_updated",
                                     "label_registry_updated"},
}
COALESCE_MAX = 100          # messages per array frame when the client asked for coalescing

# Entities the server's state stream cycles through (shaped like the HA 2024.3.3 samples).
ENTITY_TEMPLATES = [
    ("input_number.acc_temp_{i}", {"initial": None, "editable": False, "min": -20.0,
                                   "max": 50.0, "step": 0.1, "mode": "box",
                                   "unit_of_measurement": "°C",
                                   "friendly_name": "Acc temperature {i}"}),
    ("sensor.acc_temperature_{i}", {"state_class": "measurement", "unit_of_measurement": "°C",
                                    "device_class": "temperature",
                                    "friendly_name": "Acc temperature {i}"}),
    ("input_boolean.acc_switch_{i}", {"editable": False, "friendly_name": "Acc switch {i}"}),
    ("input_select.acc_mode_{i}", {"options": ["eco", "comfort", "away", "boost"],
                                   "editable": False, "friendly_name": "Acc mode {i}"}),
]


def iso(ts: float) -> str:
    """HA's formatting of a time: ``datetime.isoformat()`` of a UTC datetime."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat()


def _dumps(value) -> str:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:      # a lone surrogate (no real HA sends one): as a JSON escape
        text = json.dumps(value, separators=(",", ":"))
    return text


@dataclass
class _Entity:
    entity_id: str
    attributes_json: str
    attributes: dict
    numeric: bool
    state_json: str | None = None       # the current state object, serialized
    state: str = "unknown"
    last_updated: float = 0.0
    last_changed: float = 0.0


@dataclass
class _Recorded:
    entity_id: str
    state: str
    attributes: dict
    last_updated: float
    last_changed: float
    recorded_at: float


@dataclass
class _Client:
    writer: asyncio.StreamWriter
    authed: bool = False
    coalesce: bool = False
    last_id: int = 0
    subscriptions: dict[int, str | None] = field(default_factory=dict)   # id -> type or None
    frozen: bool = False


class HATestServer:
    """See the module docstring. Controls are thread-safe: they run on the server's own loop."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, token: str = "test-token",
                 rate: float = 0.0, entities: int = 8, admin: bool = True, recorder: bool = True,
                 recorder_lag: float = 0.0, ssl_context: ssl.SSLContext | None = None,
                 ha_version: str = DEFAULT_PROTOCOL, subscribe_delay: float = 0.0):
        if ha_version not in HA_VERSIONS:
            raise ValueError(f"ha_version must be one of {', '.join(HA_VERSIONS)}: {ha_version}")
        self.ha_version = ha_version
        release = tuple(map(int, ha_version.split(".")))
        self.float_times = release >= (2024, 7)       # time.time() floats (a datetime before)
        self.last_reported = release >= (2024, 4)     # in every state object
        self.host, self.port, self.token = host, port, token
        self.rate = rate
        self.admin = admin
        self.recorder = recorder
        self.recorder_lag = recorder_lag
        self.subscribe_delay = subscribe_delay   # a busy HA: the subscription takes effect late
        self.ssl_context = ssl_context
        self.entities = self._make_entities(entities)
        self.clients: list[_Client] = []
        self.fired = Counter()                  # event_type -> how many fired
        self.fired_states: list[tuple[str, str]] = []   # (entity_id, time_fired) of state_changed
        self.recorded: list[_Recorded] = []
        self.stats = Counter()                  # connections, auth_ok, auth_invalid, commands...
        self.id_violations = 0
        self._seq = itertools.count(1)
        self._last_ts = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._frozen_default = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._stopping: asyncio.Event | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        scheme = "wss" if self.ssl_context else "ws"
        return f"{scheme}://{self.host}:{self.port}/api/websocket"

    def start(self) -> "HATestServer":
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run_loop, args=(ready,),
                                        name="ha-test-server", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("HA test server did not start")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        self._call(self._shutdown()).result(10)
        self._thread.join(10)
        self._loop = None

    def _run_loop(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve(ready))

    async def _serve(self, ready: threading.Event) -> None:
        self._stopping = asyncio.Event()
        self._server = await asyncio.start_server(self._handle, self.host, self.port,
                                                  ssl=self.ssl_context, limit=2**24)
        self.port = self._server.sockets[0].getsockname()[1]
        pump = asyncio.ensure_future(self._pump())
        ready.set()
        await self._stopping.wait()
        pump.cancel()
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for _ in range(100):   # handlers end by themselves once their transport is gone
            if not self._writers:
                break
            await asyncio.sleep(0.02)
        await self._server.wait_closed()

    async def _shutdown(self) -> None:
        self._stopping.set()

    def _call(self, coro) -> Future:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    # -- controls -------------------------------------------------------------------------------
    def set_rate(self, rate: float) -> None:
        """state_changed events per second from now on (0 stops the stream)."""
        self.rate = rate

    def burst(self, count: int, wait: bool = True, timeout: float = 600) -> None:
        """Fire ``count`` state_changed events as fast as the server can send them."""
        future = self._call(self._burst(count))
        if wait:
            future.result(timeout)

    def fire_event(self, event_type: str, data: dict | None = None) -> dict:
        """Fire one event of any type (to the clients subscribed to it); returns the event."""
        return self._call(self._fire_custom(event_type, data or {})).result(10)

    def fire_event_json(self, event_type: str, data_json: str) -> dict:
        """Fire one event whose data is the given JSON text, sent as it is (e.g. nested deeper
        than any JSON library writes); returns the event without its data."""
        return self._call(self._fire_custom(event_type, {}, data_json)).result(10)

    def set_state(self, entity_id: str, state: str, attributes: dict | None = None) -> dict:
        """Change one entity's state (a new entity is created); returns the state_changed event."""
        return self._call(self._set_state(entity_id, state, attributes)).result(10)

    def drop_connections(self) -> int:
        """Abort every TCP connection at once (no close frame), as a network drop does."""
        return self._call(self._drop()).result(10)

    def freeze(self) -> None:
        """Stop reading, answering (pings too) and sending to every open connection."""
        self._call(self._set_frozen(True)).result(10)

    def unfreeze(self) -> None:
        self._call(self._set_frozen(False)).result(10)

    def send_raw(self, text: str) -> None:
        """Send one text frame, as is (e.g. malformed JSON), to every authenticated client."""
        self._call(self._broadcast_raw(text)).result(10)

    def send_message(self, message: dict) -> None:
        """Send one JSON message (e.g. an unknown ``type``) to every authenticated client."""
        self.send_raw(_dumps(message))

    def wait_for_subscribers(self, count: int = 1, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.subscriber_count() < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} subscriber(s) not connected after {timeout} s")
            time.sleep(0.02)

    def subscriber_count(self) -> int:
        return sum(1 for c in list(self.clients) if c.subscriptions and not c.frozen)

    def state_changed_count(self) -> int:
        return self.fired["state_changed"]

    # -- the event stream -----------------------------------------------------------------------
    def _make_entities(self, count: int) -> list[_Entity]:
        entities = []
        for i in range(count):
            pattern, attributes = ENTITY_TEMPLATES[i % len(ENTITY_TEMPLATES)]
            n = i // len(ENTITY_TEMPLATES) + 1
            attrs = {k: (val.format(i=n) if isinstance(val, str) else val)
                     for k, val in attributes.items()}
            entity_id = pattern.format(i=n)
            entities.append(_Entity(entity_id, _dumps(attrs), attrs,
                                    numeric=entity_id.split(".")[0] in ("input_number", "sensor")))
        now = time.time() - 60
        for entity in entities:
            self._apply_state(entity, "0.0" if entity.numeric else "off", now, None)
        return entities

    def _now(self) -> float:
        """A strictly increasing time, distinct at the microsecond: rounded to it as HA 2024.3
        stored a datetime, or the raw float HA keeps since 2024.7 (1.5 µs apart at least, so the
        rounded ISO times still differ)."""
        if self.float_times:
            ts = max(time.time(), self._last_ts + 1.5e-6)
        else:
            ts = round(max(time.time(), self._last_ts + 1e-6), 6)
        self._last_ts = ts
        return ts

    def _apply_state(self, entity: _Entity, state: str, ts: float, ctx_json: str | None) -> str:
        """Set the entity's state; returns the new state's JSON."""
        changed = state != entity.state
        entity.last_updated = ts
        if changed or not entity.last_changed:
            entity.last_changed = ts
        entity.state = state
        ctx_json = ctx_json or '{"id":"%s","parent_id":null,"user_id":null}' % _ulid(ts)
        reported = f'"last_reported":"{iso(ts)}",' if self.last_reported else ""
        entity.state_json = (
            f'{{"entity_id":"{entity.entity_id}","state":{_dumps(state)},'
            f'"attributes":{entity.attributes_json},"last_changed":"{iso(entity.last_changed)}",'
            f'{reported}"last_updated":"{iso(ts)}","context":{ctx_json}}}')
        return entity.state_json

    def _next_state_event(self) -> tuple[str, str]:
        seq = next(self._seq)
        entity = self.entities[seq % len(self.entities)]
        if entity.numeric:
            state = f"{(seq % 700) / 10:.1f}"
        elif entity.entity_id.startswith("input_select"):
            state = entity.attributes["options"][seq % 4]
        else:
            state = "on" if entity.state == "off" else "off"
        return self._state_changed(entity, state)

    def _state_changed(self, entity: _Entity, state: str) -> tuple[str, str]:
        """Fire a state change: returns (event_type, event JSON)."""
        ts = self._now()
        time_fired = iso(ts)
        ctx = '{"id":"%s","parent_id":null,"user_id":null}' % _ulid(ts)
        old = entity.state_json
        new = self._apply_state(entity, state, ts, ctx)
        event = (f'{{"event_type":"state_changed","data":{{"entity_id":"{entity.entity_id}",'
                 f'"old_state":{old or "null"},"new_state":{new}}},"origin":"LOCAL",'
                 f'"time_fired":"{time_fired}","context":{ctx}}}')
        self.fired["state_changed"] += 1
        self.fired_states.append((entity.entity_id, time_fired))
        if self.recorder:
            self.recorded.append(_Recorded(entity.entity_id, state, entity.attributes, ts,
                                           entity.last_changed, time.monotonic()))
        return "state_changed", event

    async def _pump(self) -> None:
        """Fire ``rate`` events per second in 10 ms ticks, whether or not anyone listens."""
        owed, last = 0.0, time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            owed += self.rate * (now - last)
            last = now
            count = int(owed)
            if count <= 0:
                continue
            owed -= count
            await self._fire_many(count)
            self._trim_history()

    def _trim_history(self, keep: int = 1_000_000) -> None:
        """Bound memory when run for hours (the demo): forget the oldest half past ``keep``."""
        if len(self.recorded) > keep:
            del self.recorded[:keep // 2]
        if len(self.fired_states) > keep:
            del self.fired_states[:keep // 2]

    async def _burst(self, count: int) -> None:
        sent = 0
        while sent < count:
            chunk = min(1000, count - sent)
            await self._fire_many(chunk)
            sent += chunk

    async def _fire_many(self, count: int) -> None:
        events = [self._next_state_event() for _ in range(count)]
        await self._deliver(events)

    async def _fire_custom(self, event_type: str, data: dict, data_json: str | None = None
                           ) -> dict:
        ts = self._now()
        event = {"event_type": event_type, "data": data, "origin": "LOCAL",
                 "time_fired": iso(ts),
                 "context": {"id": _ulid(ts), "parent_id": None, "user_id": None}}
        self.fired[event_type] += 1
        text = _dumps(event)
        if data_json is not None:
            text = text.replace('"data":{}', f'"data":{data_json}', 1)
        await self._deliver([(event_type, text)])
        return event

    async def _set_state(self, entity_id: str, state: str, attributes: dict | None) -> dict:
        entity = next((e for e in self.entities if e.entity_id == entity_id), None)
        if entity is None:
            attrs = attributes or {}
            entity = _Entity(entity_id, _dumps(attrs), attrs, numeric=False)
            self.entities.append(entity)
        elif attributes is not None:
            entity.attributes, entity.attributes_json = attributes, _dumps(attributes)
        event_type, event = self._state_changed(entity, state)
        await self._deliver([(event_type, event)])
        return json.loads(event)

    async def _deliver(self, events: list[tuple[str, str]]) -> None:
        for client in list(self.clients):
            if client.frozen or not client.subscriptions:
                continue
            messages = [f'{{"type":"event","event":{event},"id":{sub_id}}}'
                        for event_type, event in events
                        for sub_id, wanted in client.subscriptions.items()
                        if wanted is None or wanted == event_type]
            await self._send_messages(client, messages)

    async def _send_messages(self, client: _Client, messages: list[str]) -> None:
        if not messages:
            return
        if client.coalesce:
            for i in range(0, len(messages), COALESCE_MAX):
                part = messages[i:i + COALESCE_MAX]
                text = part[0] if len(part) == 1 else "[" + ",".join(part) + "]"
                client.writer.write(_frame(0x1, text.encode()))
        else:
            client.writer.write(b"".join(_frame(0x1, m.encode()) for m in messages))
        try:
            await client.writer.drain()
        except (ConnectionError, RuntimeError):
            pass

    # -- faults -----------------------------------------------------------------------------------
    async def _drop(self) -> int:
        dropped = 0
        for client in list(self.clients):
            client.writer.transport.abort()
            dropped += 1
        self.stats["dropped"] += dropped
        return dropped

    async def _set_frozen(self, frozen: bool) -> None:
        for client in list(self.clients):
            client.frozen = frozen
        self._frozen_default = frozen   # connections opened while frozen hang too

    async def _broadcast_raw(self, text: str) -> None:
        for client in list(self.clients):
            if client.authed:
                client.writer.write(_frame(0x1, text.encode()))
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await client.writer.drain()

    # -- one connection ---------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats["connections"] += 1
        client = _Client(writer, frozen=self._frozen_default)
        self._writers.add(writer)
        try:
            if not await _handshake(reader, writer):
                return
            self.clients.append(client)
            await self._send(client, {"type": "auth_required", "ha_version": self.ha_version})
            async for text in _messages(reader, writer, client):
                await self._on_text(client, text)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ssl.SSLError, OSError):
            pass
        finally:
            if client in self.clients:
                self.clients.remove(client)
            writer.transport.abort()
            self._writers.discard(writer)

    async def _send(self, client: _Client, message: dict) -> None:
        await self._send_messages(client, [_dumps(message)])

    async def _on_text(self, client: _Client, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            self.stats["client_bad_json"] += 1
            return
        if not client.authed:
            await self._authenticate(client, message)
            return
        msg_id, kind = message.get("id"), message.get("type")
        self.stats[f"cmd:{kind}"] += 1
        if not isinstance(msg_id, int) or msg_id <= client.last_id:
            self.id_violations += 1
            await self._error(client, msg_id, "id_reuse", "Identifier values have to increase.")
            return
        client.last_id = msg_id
        handler = self._commands.get(kind)
        if handler is None:
            await self._error(client, msg_id, "unknown_command", "Unknown command.")
            return
        await handler(self, client, msg_id, message)

    async def _authenticate(self, client: _Client, message: dict) -> None:
        if message.get("type") == "auth" and message.get("access_token") == self.token:
            client.authed = True
            self.stats["auth_ok"] += 1
            await self._send(client, {"type": "auth_ok", "ha_version": self.ha_version})
            return
        self.stats["auth_invalid"] += 1
        await self._send(client, {"type": "auth_invalid",
                                  "message": "Invalid access token or password"})
        client.writer.write(_frame(0x8, struct.pack("!H", 1000)))
        await client.writer.drain()
        raise ConnectionResetError("auth_invalid")

    async def _result(self, client: _Client, msg_id: int, result=None) -> None:
        await self._send(client, {"id": msg_id, "type": "result", "success": True,
                                  "result": result})

    async def _error(self, client: _Client, msg_id, code: str, text: str) -> None:
        await self._send(client, {"id": msg_id, "type": "result", "success": False,
                                  "error": {"code": code, "message": text}})

    async def _cmd_ping(self, client: _Client, msg_id: int, _message: dict) -> None:
        await self._send(client, {"id": msg_id, "type": "pong"})

    async def _cmd_features(self, client: _Client, msg_id: int, message: dict) -> None:
        client.coalesce = bool((message.get("features") or {}).get("coalesce_messages"))
        await self._result(client, msg_id)

    async def _cmd_subscribe(self, client: _Client, msg_id: int, message: dict) -> None:
        event_type = message.get("event_type")
        if event_type is not None and not isinstance(event_type, str):
            await self._error(client, msg_id, "invalid_format",
                              f"expected str for dictionary value @ data['event_type']. "
                              f"Got {event_type!r}")
            return
        if not self.admin and event_type not in NON_ADMIN_EVENT_TYPES[self.ha_version]:
            await self._error(client, msg_id, "unauthorized", "Unauthorized")
            return
        if self.subscribe_delay:   # HA registers a subscription when it answers it, not before
            await asyncio.sleep(self.subscribe_delay)
        client.subscriptions[msg_id] = event_type
        await self._result(client, msg_id)

    async def _cmd_unsubscribe(self, client: _Client, msg_id: int, message: dict) -> None:
        if client.subscriptions.pop(message.get("subscription"), "missing") == "missing":
            await self._error(client, msg_id, "not_found", "Subscription not found.")
            return
        await self._result(client, msg_id)

    async def _cmd_get_states(self, client: _Client, msg_id: int, _message: dict) -> None:
        states = "[" + ",".join(e.state_json for e in self.entities) + "]"
        text = f'{{"id":{msg_id},"type":"result","success":true,"result":{states}}}'
        await self._send_messages(client, [text])

    async def _cmd_history(self, client: _Client, msg_id: int, message: dict) -> None:
        if not self.recorder:
            await self._error(client, msg_id, "unknown_command", "Unknown command.")
            return
        start = _parse_time(message.get("start_time"))
        end = _parse_time(message.get("end_time")) if message.get("end_time") else None
        if start is None:
            await self._error(client, msg_id, "invalid_start_time", "Invalid start_time")
            return
        await self._result(client, msg_id, self._history(message, start, end))

    def _history(self, message: dict, start: float, end: float | None) -> dict:
        wanted = set(message.get("entity_ids") or ())
        visible_before = time.monotonic() - self.recorder_lag
        result: dict[str, list[dict]] = {}
        for row in self.recorded:
            if row.recorded_at > visible_before:
                break
            if row.entity_id not in wanted or row.last_updated <= start:
                continue
            if end is not None and row.last_updated >= end:
                continue
            compressed = {"s": row.state, "lu": row.last_updated}
            if not message.get("no_attributes"):
                compressed["a"] = row.attributes
            if row.last_changed != row.last_updated:
                compressed["lc"] = row.last_changed
            result.setdefault(row.entity_id, []).append(compressed)
        if message.get("include_start_time_state", True):
            for entity_id in wanted:   # HA's start-time state carries lu = start_time
                result.setdefault(entity_id, []).insert(0, {"s": "unknown", "a": {}, "lu": start})
        return result

    _commands = {"ping": _cmd_ping, "supported_features": _cmd_features,
                 "subscribe_events": _cmd_subscribe, "unsubscribe_events": _cmd_unsubscribe,
                 "get_states": _cmd_get_states, "history/history_during_period": _cmd_history}


# ---------------------------------------------------------------------------------------------
# RFC 6455, the small part a server needs

async def _handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    request = await reader.readuntil(b"\r\n\r\n")
    lines = request.decode("latin-1").split("\r\n")
    path = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else ""
    headers = {k.strip().lower(): val.strip() for k, _, val in
               (line.partition(":") for line in lines[1:] if line)}
    key = headers.get("sec-websocket-key")
    if path != "/api/websocket" or not key:
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        return False
    accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
    writer.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n").encode())
    await writer.drain()
    return True


def _frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final frame (servers never mask)."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, length)
    elif length < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, length)
    return header + payload


async def _read_frame(reader: asyncio.StreamReader) -> tuple[bool, int, bytes]:
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        length = struct.unpack("!H", await reader.readexactly(2))[0]
    elif length == 127:
        length = struct.unpack("!Q", await reader.readexactly(8))[0]
    mask = await reader.readexactly(4) if second & 0x80 else None
    payload = await reader.readexactly(length)
    if mask:
        payload = _unmask(payload, mask)
    return bool(first & 0x80), first & 0x0F, payload


def _unmask(payload: bytes, mask: bytes) -> bytes:
    key = int.from_bytes((mask * (len(payload) // 4 + 1))[:len(payload)], "big")
    return (int.from_bytes(payload, "big") ^ key).to_bytes(len(payload), "big")


async def _messages(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    client: _Client):
    """Text messages from the client; answers ping and close frames itself. While the client is
    frozen nothing is read, so pings go unanswered, as with a hung HA."""
    parts: list[bytes] = []
    while True:
        while client.frozen:
            await asyncio.sleep(0.05)
        fin, opcode, payload = await _read_frame(reader)
        while client.frozen:   # a frame that arrived as the server froze waits too
            await asyncio.sleep(0.05)
        if opcode == 0x8:
            writer.write(_frame(0x8, payload[:2]))
            await writer.drain()
            return
        if opcode == 0x9:
            writer.write(_frame(0xA, payload))
            continue
        if opcode in (0x1, 0x0):
            parts.append(payload)
            if fin:
                text, parts = b"".join(parts).decode("utf-8", "replace"), []
                yield text


def _parse_time(value) -> float | None:
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ulid_counter = itertools.count()


def _ulid(ts: float) -> str:
    """A ULID-shaped context id (26 Crockford characters), unique per call."""
    value = (int(ts * 1000) << 80) | (next(_ulid_counter) & ((1 << 80) - 1))
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


# ---------------------------------------------------------------------------------------------
# Command line

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Home Assistant WebSocket test server "
                                     "(HA's protocol) for demos and benchmarks.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8124)
    parser.add_argument("--token", default="test-token")
    parser.add_argument("--rate", type=float, default=10.0, help="state_changed events per second")
    parser.add_argument("--entities", type=int, default=8)
    parser.add_argument("--ha-version", choices=HA_VERSIONS, default=DEFAULT_PROTOCOL,
                        help="whose frames to send")
    parser.add_argument("--no-recorder", action="store_true", help="answer history as HA "
                        "without recorder does (unknown_command)")
    args = parser.parse_args(argv)
    server = HATestServer(args.host, args.port, args.token, args.rate, args.entities,
                          recorder=not args.no_recorder, ha_version=args.ha_version).start()
    print(f"HA test server on {server.url} (token {args.token!r}, {args.rate:g} events/s)",
          flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
