"""A real Home Assistant 2024.3.3 for the chaos run: its own virtualenv (created when missing),
an offline config with the helpers the load generator drives, HA's own ``influxdb:`` integration
(api_version 1) writing to a second database, onboarding and a long-lived token without a browser.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.chaos.hawire import HAConnection
from tests.chaos.servers import Server, http
from tests.support import procs
from tests.support.real_ha import ensure_ha_venv


def ensure_venv() -> Path:
    """The ``hass`` script of the shared HA virtualenv (created with HA's first-start packages
    when missing, by the same installer every real-HA test uses)."""
    return ensure_ha_venv() / "bin" / "hass"


def entity_ids(per_domain: int) -> list[str]:
    """The helpers the load generator drives; all object ids start with ``chaos_``."""
    ids = []
    for i in range(1, per_domain + 1):
        ids += [f"input_number.chaos_temp_{i}", f"input_boolean.chaos_switch_{i}",
                f"counter.chaos_counter_{i}"]
    return ids


def _config_yaml(port: int, per_domain: int, influx_port: int | None, influx_db: str) -> str:
    numbers = "".join(
        f"  chaos_temp_{i}:\n    name: Chaos temperature {i}\n    min: -1000\n    max: 1000\n"
        f"    step: 0.01\n    mode: box\n    unit_of_measurement: \"°C\"\n"
        for i in range(1, per_domain + 1))
    numbers += ("  bench_probe:\n    name: Bench probe\n    min: 0\n    max: 1000\n"
                "    step: 0.01\n    mode: box\n")
    booleans = "".join(f"  chaos_switch_{i}:\n    name: Chaos switch {i}\n"
                       for i in range(1, per_domain + 1))
    counters = "".join(f"  chaos_counter_{i}:\n    name: Chaos counter {i}\n"
                       for i in range(1, per_domain + 1))
    influx = ""
    if influx_port:
        influx = (f"influxdb:\n  api_version: 1\n  host: 127.0.0.1\n  port: {influx_port}\n"
                  f"  database: {influx_db}\n  include:\n    entity_globs:\n      - \"*.chaos_*\"\n")
    return (
        "homeassistant:\n  name: Chaos\n  latitude: 52.37\n  longitude: 4.89\n  elevation: 0\n"
        "  unit_system: metric\n  time_zone: UTC\n  country: NL\n  currency: EUR\n"
        f"http:\n  server_host: 127.0.0.1\n  server_port: {port}\n"
        "api:\nwebsocket_api:\nhistory:\n"
        "recorder:\n  commit_interval: 1\n  purge_keep_days: 2\n"
        "logger:\n  default: warning\n"
        f"input_number:\n{numbers}input_boolean:\n{booleans}counter:\n{counters}{influx}")


class HomeAssistantServer(Server):
    """Real HA on loopback. ``token`` is a long-lived access token, created on the first start."""

    name = "homeassistant"

    def __init__(self, workdir: Path, per_domain: int = 5, influx_port: int | None = None,
                 influx_db: str = "ha_integration") -> None:
        super().__init__(workdir)
        self.hass = ensure_venv()
        self.port = procs.free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/api/websocket"
        self.config_dir = self.dir / "config"
        self.entities = entity_ids(per_domain)
        self.token: str | None = None
        storage = self.config_dir / ".storage"
        storage.mkdir(parents=True, exist_ok=True)
        (self.config_dir / "configuration.yaml").write_text(
            _config_yaml(self.port, per_domain, influx_port, influx_db))
        # core_config done up front: completing it over REST starts flows that call the internet
        (storage / "onboarding").write_text(json.dumps(
            {"version": 4, "minor_version": 1, "key": "onboarding",
             "data": {"done": ["core_config"]}}))

    @property
    def recorder_db(self) -> Path:
        return self.config_dir / "home-assistant_v2.db"

    def argv(self) -> list[str]:
        return [str(self.hass), "-c", str(self.config_dir)]

    def ready(self) -> bool:
        try:
            status, _ = http("GET", f"{self.base}/manifest.json", timeout=2)
        except OSError:
            return False
        return status == 200

    def start(self, timeout: float = 240.0) -> None:
        super().start(timeout)
        if self.token is None:
            self.token = self._onboard()
        procs.wait_until(self._running, timeout, "Home Assistant core state RUNNING", interval=0.5)

    def stop(self, timeout: float = 60.0) -> None:
        super().stop(timeout)

    def connect(self) -> HAConnection:
        return HAConnection(self.ws_url, self.token)

    def _running(self) -> bool:
        try:
            conn = self.connect()
        except Exception:
            return False
        try:
            return conn.request({"type": "get_config"}).get("state") == "RUNNING"
        finally:
            conn.close()

    def _onboard(self) -> str:
        client_id = f"{self.base}/"
        body = json.dumps({"client_id": client_id, "name": "Chaos", "username": "chaos",
                           "password": "chaos-password-1", "language": "en"}).encode()
        status, reply = self._retry_post("/api/onboarding/users", body,
                                         {"Content-Type": "application/json"})
        code = json.loads(reply)["auth_code"]
        form = f"grant_type=authorization_code&code={code}&client_id={client_id}".encode()
        status, reply = http("POST", f"{self.base}/auth/token", form,
                             {"Content-Type": "application/x-www-form-urlencoded"})
        access = json.loads(reply)["access_token"]
        auth = {"Authorization": f"Bearer {access}", "Content-Type": "application/json"}
        http("POST", f"{self.base}/api/onboarding/analytics", b"{}", auth)
        http("POST", f"{self.base}/api/onboarding/integration", json.dumps(
            {"client_id": client_id, "redirect_uri": f"{client_id}?auth_callback=1"}).encode(),
            auth)
        conn = HAConnection(self.ws_url, access)
        try:
            token = conn.request({"type": "auth/long_lived_access_token",
                                  "client_name": "chaos", "lifespan": 365})
        finally:
            conn.close()
        (self.dir / "token").write_text(token)
        return token

    def _retry_post(self, path: str, body: bytes, headers: dict) -> tuple[int, bytes]:
        deadline = time.monotonic() + 120
        while True:
            try:
                status, reply = http("POST", f"{self.base}{path}", body, headers)
                if status == 200:
                    return status, reply
            except OSError as exc:
                status, reply = 0, str(exc).encode()
            if time.monotonic() > deadline:
                raise RuntimeError(f"POST {path}: HTTP {status} {reply[:300]!r}")
            time.sleep(1)
