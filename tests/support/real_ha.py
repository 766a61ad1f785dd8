"""A real Home Assistant for tests: its own virtual environment, a small offline config,
onboarding over HA's REST API and a long-lived admin token. Every tested release
(``HA_VERSIONS``: 2024.3.3 on Python 3.11, 2025.4.4 on Python 3.13) runs the same way.

    from tests.support.real_ha import HomeAssistantServer

    ha = HomeAssistantServer(tmp_path / "ha", extra_yaml="influxdb:\\n  host: 127.0.0.1\\n",
                             version="2025.4.4")
    ha.start()                      # first start onboards and creates ha.token
    with ha.client() as client:     # a small synchronous WebSocket client
        client.call_service("input_boolean", "toggle",
                            target={"entity_id": "input_boolean.acc_switch_1"})
    ha.restart()                    # keeps .storage and the token
    ha.stop()

HA is kept out of the project's environment: each release runs from its own cached venv
(``tests/support/ha_venv.py``), which holds everything HA would otherwise pip-install on its
first start; HA runs with its package installer offline, so a start never needs a package index.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import textwrap
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from pathlib import Path
from typing import Any

import websocket

from tests.support.ha_venv import (DEFAULT_HA_VERSION, HA_VERSIONS, OFFLINE_ENV,
                                   HAInstallError, ensure_ha_venv, ha_venv_dir, release)
from tests.support.procs import free_port, start_process, tail

__all__ = ["DEFAULT_HA_VERSION", "HA_VERSIONS", "HAInstallError", "ensure_ha_venv",
           "ha_venv_dir", "HomeAssistantServer", "HAClient", "HAStartError", "EventRecorder",
           "change_calls", "drive", "CONFIG_ENTITIES"]

TOKEN_CLIENT_NAME = "ha-ingestor tests"
OWNER = {"name": "Test Owner", "username": "owner", "password": "ha-ingestor-test-pw",
         "language": "en"}


class HAStartError(RuntimeError):
    """Home Assistant could not be installed, started or onboarded; the message has its log."""


# ---------------------------------------------------------------------------------------------
# Configuration

BASE_CONFIG = """\
homeassistant:
  name: Test Home
  latitude: 52.3731339
  longitude: 4.8903147
  elevation: 0
  unit_system: metric
  time_zone: UTC
  country: NL
  currency: EUR
  language: en
  internal_url: "http://127.0.0.1:{port}"

http:
  server_host: 127.0.0.1
  server_port: {port}

api:
websocket_api:
config:
logger:
  default: warning

input_boolean:
  acc_switch_1:
    name: Acc switch 1
  acc_switch_2:
    name: Acc switch 2

input_number:
  acc_temp_1:
    name: Acc temperature 1
    min: -20
    max: 50
    step: 0.1
    mode: box
    unit_of_measurement: "°C"
  acc_temp_2:
    name: Acc temperature 2
    min: -20
    max: 50
    step: 0.1
    mode: box
    unit_of_measurement: "°C"
  acc_humidity:
    name: Acc humidity
    min: 0
    max: 100
    step: 1
    mode: slider
    unit_of_measurement: "%"

counter:
  acc_counter:
    name: Acc counter
    initial: 0
    step: 1

input_text:
  acc_note:
    name: Acc note
    max: 100

input_select:
  acc_mode:
    name: Acc mode
    options: [eco, comfort, away, boost]

template:
  - sensor:
      - name: Acc temperature average
        unit_of_measurement: "°C"
        device_class: temperature
        state_class: measurement
        state: >-
          {{{{ ((states('input_number.acc_temp_1') | float(0)
               + states('input_number.acc_temp_2') | float(0)) / 2) | round(2) }}}}

alarm_control_panel:
  - platform: manual
    name: Acc alarm
    code: "1234"
    arming_time: 0
    delay_time: 0
    trigger_time: 0

automation:
  - id: acc_switch_1_counts
    alias: Acc switch 1 counts
    mode: queued
    max: 1000
    trigger:
      - platform: state
        entity_id: input_boolean.acc_switch_1
    action:
      - service: counter.increment
        target:
          entity_id: counter.acc_counter
"""

RECORDER_CONFIG = """
recorder:
  commit_interval: 1
  purge_keep_days: 2
history:
"""

# Entities the config above creates (the automation and template sensor included).
CONFIG_ENTITIES = (
    "input_boolean.acc_switch_1", "input_boolean.acc_switch_2",
    "input_number.acc_temp_1", "input_number.acc_temp_2", "input_number.acc_humidity",
    "counter.acc_counter", "input_text.acc_note", "input_select.acc_mode",
    "sensor.acc_temperature_average", "automation.acc_switch_1_counts",
    "alarm_control_panel.acc_alarm",
)


def _yaml_domains(text: str) -> set[str]:
    """Top-level keys of a YAML snippet (the integrations it configures)."""
    return {line.split(":", 1)[0].split(" ", 1)[0] for line in text.splitlines()
            if line and not line[0].isspace() and not line.startswith("#") and ":" in line}


# ---------------------------------------------------------------------------------------------
# The server

class HomeAssistantServer:
    """A real HA process on 127.0.0.1, with its config folder under ``workdir``.

    The first ``start()`` writes the onboarding file, onboards an owner over REST and keeps a
    long-lived admin token in ``workdir/ha.token``; later starts (``restart()``) reuse ``.storage``
    and the token."""

    def __init__(self, workdir: Path, port: int | None = None, extra_yaml: str = "",
                 recorder: bool = True, version: str = DEFAULT_HA_VERSION):
        self.version = release(version).version
        self.workdir = Path(workdir)
        self.config_dir = self.workdir / "config"
        self.log_path = self.workdir / "ha.log"
        self.port = port or free_port()
        self.extra_yaml = textwrap.dedent(extra_yaml)
        self.recorder = recorder
        self.proc: subprocess.Popen | None = None
        self.token: str | None = None
        self.start_seconds: list[float] = []   # wall time of every start, for reports
        self._token_path = self.workdir / "ha.token"

    # -- public ---------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/websocket"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 240) -> "HomeAssistantServer":
        began = time.monotonic()
        venv = ensure_ha_venv(tuple(sorted(_yaml_domains(self.extra_yaml))), self.version)
        self._write_config()
        argv = [str(venv / "bin" / "hass"), "--config", str(self.config_dir), "--log-no-color"]
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **OFFLINE_ENV}
        env.pop("VIRTUAL_ENV", None)
        self.proc = start_process(argv, self.log_path, env=env, cwd=self.workdir)
        deadline = began + timeout
        try:
            self._wait_http(deadline)
            if self._token_path.exists():
                self.token = self._token_path.read_text().strip()
            else:
                self.token = self._onboard(deadline)
                self._wait_token_saved(deadline)
                self._token_path.write_text(self.token)
            self._wait_running(deadline)
        except Exception as exc:
            self.kill()
            raise HAStartError(f"Home Assistant did not start: {exc}\n--- {self.log_path}:\n"
                               f"{tail(self.log_path, 60)}") from exc
        self.start_seconds.append(time.monotonic() - began)
        return self

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM (HA stops cleanly, the recorder commits), SIGKILL after ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        return self.proc.wait(30)

    def restart(self, timeout: float = 240) -> "HomeAssistantServer":
        self.stop()
        return self.start(timeout)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, timeout: float = 30) -> "HAClient":
        if not self.token:
            raise HAStartError("Home Assistant has not been started (no token yet)")
        return HAClient(self.ws_url, self.token, timeout)

    def user_token(self, username: str = "family", admin: bool = False) -> str:
        """An access token of another user (``system-users`` unless ``admin``), logged in over
        HA's login flow like a browser would. It is short-lived (30 min): enough for a test."""
        password = f"{username}-pw-123"
        group = "system-admin" if admin else "system-users"
        with self.client() as client:
            user = client.command({"type": "config/auth/create", "name": username.title(),
                                   "group_ids": [group]})["user"]
            client.command({"type": "config/auth_provider/homeassistant/create",
                            "user_id": user["id"], "username": username, "password": password})
        client_id = self.url + "/"
        status, raw = self._http("POST", "/auth/login_flow", json.dumps(
            {"client_id": client_id, "handler": ["homeassistant", None],
             "redirect_uri": client_id}).encode())
        flow_id = json.loads(raw)["flow_id"]
        status, raw = self._http("POST", f"/auth/login_flow/{flow_id}", json.dumps(
            {"client_id": client_id, "username": username, "password": password}).encode())
        code = json.loads(raw).get("result") if status == 200 else None
        if not code:
            raise HAStartError(f"login flow for {username} failed: HTTP {status}: {raw[:300]!r}")
        form = urllib.parse.urlencode({"grant_type": "authorization_code", "code": code,
                                       "client_id": client_id})
        status, raw = self._http("POST", "/auth/token", data=form.encode(),
                                 ctype="application/x-www-form-urlencoded")
        if status != 200:
            raise HAStartError(f"/auth/token for {username} answered {status}: {raw[:300]!r}")
        return json.loads(raw)["access_token"]

    def configure_mqtt(self, port: int, host: str = "127.0.0.1") -> dict:
        """Set up HA's MQTT integration (a config flow: it has no YAML set-up) against a broker.
        ``mqtt_statestream:`` in extra_yaml only works after this and a ``restart()``."""
        status, raw = self._http("POST", "/api/config/config_entries/flow",
                                 json.dumps({"handler": "mqtt"}).encode(), auth=True)
        if status != 200:
            raise HAStartError(f"starting the MQTT config flow: HTTP {status}: {raw[:300]!r}")
        flow_id = json.loads(raw)["flow_id"]
        status, raw = self._http("POST", f"/api/config/config_entries/flow/{flow_id}",
                                 json.dumps({"broker": host, "port": port}).encode(), auth=True)
        result = json.loads(raw) if status == 200 else {}
        if result.get("type") != "create_entry":
            raise HAStartError(f"MQTT config flow did not create an entry: HTTP {status}: "
                               f"{raw[:300]!r}")
        return result

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)

    def __enter__(self) -> "HomeAssistantServer":
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()

    # -- config and start-up ------------------------------------------------------------------
    def _write_config(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        text = BASE_CONFIG.format(port=self.port)
        if self.recorder:
            text += RECORDER_CONFIG
        if self.extra_yaml:
            text += "\n" + self.extra_yaml
        (self.config_dir / "configuration.yaml").write_text(text)
        onboarding = self.config_dir / ".storage" / "onboarding"
        if not onboarding.exists():
            # core_config done up front: completing it over REST starts config flows that call
            # the internet (met, radio_browser).
            onboarding.parent.mkdir(parents=True, exist_ok=True)
            onboarding.write_text(json.dumps({"version": 4, "minor_version": 1,
                                              "key": "onboarding",
                                              "data": {"done": ["core_config"]}}))

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise HAStartError(f"the hass process exited with {self.proc.returncode}")

    def _wait_http(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            self._check_alive()
            status, _ = self._http("GET", "/manifest.json", timeout=2)
            if status:   # any HTTP answer: the server is up
                return
            time.sleep(0.2)
        raise TimeoutError(f"no HTTP answer on {self.url}")

    def _wait_running(self, deadline: float) -> None:
        """HA answers HTTP before every integration is set up; wait for state RUNNING."""
        while time.monotonic() < deadline:
            self._check_alive()
            status, body = self._http("GET", "/api/config", auth=True, timeout=5)
            if status == 200 and json.loads(body).get("state") == "RUNNING":
                return
            time.sleep(0.2)
        raise TimeoutError("Home Assistant did not reach state RUNNING")

    def _onboard(self, deadline: float) -> str:
        client_id = self.url + "/"
        body = self._retry_json("POST", "/api/onboarding/users",
                                {"client_id": client_id, **OWNER}, deadline)
        form = urllib.parse.urlencode({"grant_type": "authorization_code",
                                       "code": body["auth_code"], "client_id": client_id})
        status, raw = self._http("POST", "/auth/token", data=form.encode(),
                                 ctype="application/x-www-form-urlencoded")
        if status != 200:
            raise HAStartError(f"/auth/token answered {status}: {raw[:300]!r}")
        self.token = json.loads(raw)["access_token"]
        for path, payload in (("/api/onboarding/analytics", {}),
                              ("/api/onboarding/integration",
                               {"client_id": client_id, "redirect_uri": client_id})):
            self._http("POST", path, data=json.dumps(payload).encode(), auth=True)
        with HAClient(self.ws_url, self.token) as client:
            return client.command({"type": "auth/long_lived_access_token",
                                   "client_name": TOKEN_CLIENT_NAME, "lifespan": 365})

    def _wait_token_saved(self, deadline: float) -> None:
        """HA writes its auth store with a delay: wait until the new token is on disk, so that a
        kill() right after the first start cannot lose it."""
        auth = self.config_dir / ".storage" / "auth"
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if TOKEN_CLIENT_NAME in auth.read_text():
                    return
            time.sleep(0.2)
        raise TimeoutError("HA did not save the long-lived token to .storage/auth")

    def _retry_json(self, method: str, path: str, payload: dict, deadline: float) -> dict:
        """The onboarding views register a moment after HTTP is up: retry until they answer."""
        last = None
        while time.monotonic() < deadline:
            self._check_alive()
            status, raw = self._http(method, path, data=json.dumps(payload).encode())
            if status == 200:
                return json.loads(raw)
            last = (status, raw[:300])
            time.sleep(0.3)
        raise TimeoutError(f"{method} {path} kept failing: {last}")

    def _http(self, method: str, path: str, data: bytes | None = None, auth: bool = False,
              ctype: str = "application/json", timeout: float = 10) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", ctype)
        if auth and self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, OSError):
            return 0, b""


# ---------------------------------------------------------------------------------------------
# A small synchronous WebSocket client for driving and observing HA in tests

class HAClientError(RuntimeError):
    """HA answered a command with ``success: false``; ``.code`` is HA's error code."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


class HAClient:
    """Authenticates on connect. ``command()`` waits for its result; events that arrive meanwhile
    are kept for ``recv_event()``. Not thread-safe: one test thread per client."""

    def __init__(self, ws_url: str, token: str, timeout: float = 30):
        self.timeout = timeout
        self.ws = websocket.create_connection(ws_url, timeout=timeout)
        self._next_id = 1
        self._events: deque[dict] = deque()
        self._results: dict[int, dict] = {}
        first = json.loads(self.ws.recv())
        if first.get("type") != "auth_required":
            raise HAClientError("protocol", f"expected auth_required, got {first}")
        self.ws.send(json.dumps({"type": "auth", "access_token": token}))
        reply = json.loads(self.ws.recv())
        if reply.get("type") != "auth_ok":
            self.ws.close()
            raise HAClientError(reply.get("type", "?"), reply.get("message", str(reply)))
        self.ha_version = reply.get("ha_version")

    def send(self, message: dict) -> int:
        """Send a command without waiting; returns its id (collect with ``result(id)``)."""
        msg_id = self._next_id
        self._next_id += 1
        self.ws.send(json.dumps({"id": msg_id, **message}))
        return msg_id

    def result(self, msg_id: int, timeout: float | None = None) -> Any:
        deadline = time.monotonic() + (timeout or self.timeout)
        while msg_id not in self._results:
            self._read_one(deadline)
        reply = self._results.pop(msg_id)
        if reply.get("type") == "pong":
            return None
        if not reply.get("success"):
            error = reply.get("error") or {}
            raise HAClientError(error.get("code", "?"), error.get("message", ""))
        return reply.get("result")

    def command(self, message: dict, timeout: float | None = None) -> Any:
        return self.result(self.send(message), timeout)

    def call_service(self, domain: str, service: str, data: dict | None = None,
                     target: dict | None = None, wait: bool = True) -> Any:
        message: dict[str, Any] = {"type": "call_service", "domain": domain, "service": service}
        if data:
            message["service_data"] = data
        if target:
            message["target"] = target
        return self.command(message) if wait else self.send(message)

    def subscribe_events(self, event_type: str | None = None) -> int:
        message: dict[str, Any] = {"type": "subscribe_events"}
        if event_type:
            message["event_type"] = event_type
        msg_id = self.send(message)
        self.result(msg_id)
        return msg_id

    def recv_event(self, timeout: float = 10) -> dict | None:
        """The next event (the ``event`` object of an event frame), or None after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self._events:
            try:
                self._read_one(deadline)
            except TimeoutError:
                return None
        return self._events.popleft()

    def get_states(self) -> list[dict]:
        return self.command({"type": "get_states"})

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()

    def __enter__(self) -> "HAClient":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def _read_one(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no answer from Home Assistant in time")
        self.ws.settimeout(remaining)
        try:
            raw = self.ws.recv()
        except websocket.WebSocketTimeoutException as exc:
            raise TimeoutError("no answer from Home Assistant in time") from exc
        payload = json.loads(raw)
        for message in payload if isinstance(payload, list) else [payload]:
            if message.get("type") == "event":
                self._events.append(message["event"])
            elif "id" in message:
                self._results[message["id"]] = message


# ---------------------------------------------------------------------------------------------
# Driving a real HA and recording what its event bus carried

def change_calls(count: int, start: int = 0):
    """``count`` service calls that each change at least one state (some cause more: the template
    sensor follows the temperatures; the automation counts switch toggles)."""
    for n in range(start, start + count):
        kind = n % 6
        if kind in (0, 3):
            entity = "input_number.acc_temp_1" if kind == 0 else "input_number.acc_temp_2"
            yield ("input_number", "set_value", {"value": round(-19.9 + (n * 0.7) % 69, 1)},
                   {"entity_id": entity})
        elif kind == 1:
            yield ("input_boolean", "toggle", None, {"entity_id": "input_boolean.acc_switch_1"})
        elif kind == 2:
            yield ("input_number", "set_value", {"value": n % 100},
                   {"entity_id": "input_number.acc_humidity"})
        elif kind == 4:
            yield ("input_text", "set_value", {"value": f"note {n}"},
                   {"entity_id": "input_text.acc_note"})
        else:
            yield ("input_select", "select_next", None, {"entity_id": "input_select.acc_mode"})


def drive(client: HAClient, calls, window: int = 32, rate: float | None = None) -> int:
    """Make the calls with up to ``window`` in flight (unpaced), or at ``rate`` calls/s."""
    pending: deque[int] = deque()
    made, began = 0, time.monotonic()
    for domain, service, data, target in calls:
        if rate:
            delay = began + made / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        pending.append(client.call_service(domain, service, data, target, wait=False))
        made += 1
        while len(pending) >= window or (rate and len(pending) > 1):
            client.result(pending.popleft(), timeout=60)
    while pending:
        client.result(pending.popleft(), timeout=60)
    return made


class EventRecorder:
    """Everything HA's event bus carries, from a subscription of our own (a reference to compare
    the collector's queue with). Runs in a background thread until ``stop()``."""

    def __init__(self, server: HomeAssistantServer):
        self.events: list[dict] = []
        self._client = server.client()
        self._client.subscribe_events()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="ha-event-recorder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping:
            try:
                event = self._client.recv_event(0.5)
            except (OSError, websocket.WebSocketException, HAClientError):
                return   # HA went away (a restart): this recorder is done
            if event is not None:
                self.events.append(event)

    def stop(self) -> list[dict]:
        self._stopping = True
        self._thread.join(10)
        self._client.close()
        return self.events

    def state_changes(self) -> list[dict]:
        return [e for e in list(self.events) if e["event_type"] == "state_changed"]

    def max_rate(self, event_type: str | None = None) -> int:
        """The most events HA fired in one second (by time_fired), of one type or all."""
        per_second: dict[str, int] = {}
        for event in list(self.events):
            if event_type and event["event_type"] != event_type:
                continue
            second = event["time_fired"][:19]
            per_second[second] = per_second.get(second, 0) + 1
        return max(per_second.values(), default=0)
