"""The add-on's entrypoint: the Supervisor's options, token and MQTT service into an ha-ingestor
config, then ``exec ha-ingestor run``.

- ``/data/options.json``: what the user set on the add-on's Configuration tab (the Supervisor has
  validated it against ``schema:`` in config.yaml).
- ``SUPERVISOR_TOKEN``: the add-on's token. Home Assistant is reached through the Supervisor's
  WebSocket proxy, ``ws://supervisor/core/websocket`` (``homeassistant_api: true``), with this
  token; no long-lived access token is needed.
- ``GET http://supervisor/services/mqtt``: the broker of the Mosquitto add-on (host, port, ssl,
  username, password, protocol), unless the user set ``mqtt.host`` to use another broker.

The config goes to ``/data/ha-ingestor.yaml`` without any secret in it: the token and passwords
are handed to ha-ingestor in its environment and referred to as ``${NAME}``. A wrong option makes
``ha-ingestor run`` exit 2 with the same message ``ha-ingestor config check`` prints.

``SUPERVISOR_URL`` (default ``http://supervisor``) and ``ADDON_DATA`` (default ``/data``) exist so
the entrypoint can run against a Supervisor stand-in in tests; the Supervisor sets neither.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import yaml

from ha_ingestor.backoff import Backoff
from ha_ingestor.errors import EXIT_CONFIG, EXIT_FAILURE

SUPERVISOR_URL = "http://supervisor"
DATA_DIR = "/data"
SUPERVISOR_WAIT_S = 60.0        # the Supervisor answers within seconds of an add-on's start
SECRET_ENV = {("mqtt", "password"): "ADDON_MQTT_PASSWORD",
              ("influxdb", "password"): "ADDON_INFLUXDB_PASSWORD",
              ("influxdb", "token"): "ADDON_INFLUXDB_TOKEN"}
INFLUX_KEYS = ("api", "url", "database", "username", "org", "bucket")
FILTER_KEYS = ("domains", "entities", "entity_globs")


class AddonError(Exception):
    """Something the user or the Supervisor has to fix; ``exit_code`` says which."""

    def __init__(self, message: str, exit_code: int = EXIT_CONFIG):
        super().__init__(message)
        self.exit_code = exit_code


# ---- inputs ---------------------------------------------------------------------------------

def read_options(data_dir: Path) -> dict:
    path = data_dir / "options.json"
    try:
        options = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AddonError(f"{path} not found: the Supervisor writes it when the add-on starts")
    except (OSError, ValueError) as exc:
        raise AddonError(f"{path} cannot be read as JSON: {exc}")
    if not isinstance(options, dict):
        raise AddonError(f"{path} must hold a JSON object, got {type(options).__name__}")
    return options


def fetch_mqtt_service(supervisor: str, token: str, wait_s: float = SUPERVISOR_WAIT_S
                       ) -> dict | None:
    """The Supervisor's MQTT service data, or None when no add-on provides it (HTTP 400, "Service
    not enabled"). An unreachable Supervisor is retried with backoff for ``wait_s``."""
    backoff, deadline = Backoff(base=0.5, cap=5.0), time.monotonic() + wait_s
    while True:
        try:
            return _get_service(f"{supervisor}/services/mqtt", token)
        except (urllib.error.URLError, OSError) as exc:
            if isinstance(exc, urllib.error.HTTPError) or time.monotonic() >= deadline:
                raise _service_error(supervisor, exc) from None
            time.sleep(backoff.next_delay())


def _get_service(url: str, token: str) -> dict | None:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        if exc.code == 400:
            return None
        raise
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict) or not data.get("host"):
        raise AddonError("the Supervisor's MQTT service answered without a broker host",
                         EXIT_FAILURE)
    return data


def _service_error(supervisor: str, exc: Exception) -> AddonError:
    if isinstance(exc, urllib.error.HTTPError) and exc.code in (401, 403):
        return AddonError(f"the Supervisor refused this add-on's token for {supervisor}/services/"
                          f"mqtt (HTTP {exc.code}); reinstalling the add-on renews its token")
    return AddonError(f"cannot ask the Supervisor for the MQTT service at {supervisor}: {exc}",
                      EXIT_FAILURE)


# ---- the config -----------------------------------------------------------------------------

def mqtt_section(options: dict, service: dict | None) -> tuple[dict, dict[str, str]]:
    """The ``mqtt:`` section and its secret environment: the user's broker if ``mqtt.host`` is
    set, else the Supervisor's MQTT service."""
    opts = options.get("mqtt") or {}
    section = {"enabled": bool(opts.get("enabled", True)), "topics": opts.get("topics", ["#"]),
               "exclude_topics": opts.get("exclude_topics", [])}
    if not section["enabled"]:
        return section, {}
    broker = opts if opts.get("host") else service
    if broker is None:
        raise AddonError("mqtt.enabled is true but there is no broker: no add-on provides the "
                         "Supervisor's MQTT service (install and start the Mosquitto broker "
                         "add-on) and mqtt.host is not set")
    section.update(host=broker["host"], port=broker.get("port") or 1883)
    if broker.get("ssl"):
        section["tls"] = {"enabled": True}
    env = {}
    if broker.get("username"):
        section["username"] = broker["username"]
    if broker.get("password"):
        section["password"] = "${%s}" % SECRET_ENV["mqtt", "password"]
        env[SECRET_ENV["mqtt", "password"]] = str(broker["password"])
    return section, env


def influxdb_section(options: dict) -> tuple[dict, dict[str, str]]:
    opts = options.get("influxdb") or {}
    section = {key: opts[key] for key in INFLUX_KEYS if opts.get(key) not in (None, "")}
    env = {}
    for key in ("password", "token"):
        if opts.get(key):
            section[key] = "${%s}" % SECRET_ENV["influxdb", key]
            env[SECRET_ENV["influxdb", key]] = str(opts[key])
    return section, env


def schema_section(options: dict) -> dict:
    """HA's include/exclude filters and the MQTT topic presets (docs/schema.md)."""
    state_changed = {}
    for side in ("include", "exclude"):
        filters = {key: values for key, values in (options.get(side) or {}).items()
                   if key in FILTER_KEYS and values}
        if filters:
            state_changed[side] = filters
    schema = {"state_changed": state_changed} if state_changed else {}
    presets = (options.get("mqtt") or {}).get("presets") or []
    if presets:
        schema["mqtt"] = {"presets": presets}
    return schema


def build_config(options: dict, service: dict | None, supervisor: str, data_dir: Path
                 ) -> tuple[dict, dict[str, str]]:
    """(config, secret environment) for ``ha-ingestor run``."""
    mqtt, mqtt_env = mqtt_section(options, service)
    influxdb, influx_env = influxdb_section(options)
    ha = options.get("homeassistant") or {}
    queue = options.get("queue") or {}
    config = {
        "queue": {"dir": str(data_dir / "queue"), "max_bytes": queue.get("max_bytes", "1GiB")},
        "mqtt": mqtt,
        "homeassistant": {"url": websocket_url(supervisor), "token": "${SUPERVISOR_TOKEN}",
                          "event_types": ha.get("event_types") or []},
        "influxdb": influxdb,
        # The Supervisor's watchdog requests /healthz on the add-on's own address.
        "metrics": {"host": "0.0.0.0"},
    }
    schema = schema_section(options)
    if schema:
        config["schema"] = schema
    return config, {**mqtt_env, **influx_env}


def websocket_url(supervisor: str) -> str:
    """``http://supervisor`` -> ``ws://supervisor/core/websocket``."""
    parsed = urlparse(supervisor)
    scheme = "wss" if parsed.scheme == "https" else "ws"
    return f"{scheme}://{parsed.netloc}{parsed.path.rstrip('/')}/core/websocket"


def write_config(config: dict, path: Path) -> None:
    """Written private (0600) although it holds no secret: it names the user's hosts."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write("# Written by the add-on's entrypoint from /data/options.json at every "
                     "start;\n# edit the options on the add-on's Configuration tab instead.\n")
        yaml.safe_dump(config, handle, sort_keys=False)


def describe(config: dict, service_used: bool) -> str:
    mqtt, influx = config["mqtt"], config["influxdb"]
    broker = "off" if not mqtt["enabled"] else f"{mqtt['host']}:{mqtt['port']}" + (
        " (the Supervisor's MQTT service)" if service_used else " (mqtt.host option)")
    return (f"Home Assistant via {config['homeassistant']['url']}; MQTT broker {broker}; "
            f"InfluxDB {influx.get('api', 'v1')} {influx.get('url', '(default URL)')}; "
            f"queue {config['queue']['dir']}")


# ---- main -----------------------------------------------------------------------------------

def prepare(env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The ``ha-ingestor run`` command line and its environment. Raises AddonError."""
    token = env.get("SUPERVISOR_TOKEN")
    if not token:
        raise AddonError("SUPERVISOR_TOKEN is not set: the Supervisor sets it for add-ons with "
                         "homeassistant_api: true")
    supervisor = env.get("SUPERVISOR_URL", SUPERVISOR_URL).rstrip("/")
    data_dir = Path(env.get("ADDON_DATA", DATA_DIR))
    options = read_options(data_dir)
    wants_service = (options.get("mqtt") or {}).get("enabled", True) and \
        not (options.get("mqtt") or {}).get("host")
    service = fetch_mqtt_service(supervisor, token) if wants_service else None
    config, secrets = build_config(options, service, supervisor, data_dir)
    path = data_dir / "ha-ingestor.yaml"
    write_config(config, path)
    print(f"ha-ingestor add-on: {describe(config, wants_service)}", flush=True)
    level = options.get("log_level", "info")
    argv = [sys.executable, "-m", "ha_ingestor", "--config", str(path), "--log-level", level, "run"]
    return argv, {**env, **secrets}


def main() -> None:
    try:
        argv, env = prepare(dict(os.environ))
    except AddonError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)
    os.umask(0o077)     # the queue files and everything else ha-ingestor creates: owner only
    os.execve(argv[0], argv, env)


if __name__ == "__main__":
    main()
