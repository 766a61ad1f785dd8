"""Home Assistant's own influxdb integration as a reference, in HA's own venv: one long-lived
process per release that, for a configuration folder, loads configuration.yaml the way HA does
(``async_hass_config_yaml``: includes, secrets, ``!env_var``, packages), validates the influxdb
block with ``INFLUX_SCHEMA``, builds the client HA would connect with (``get_influx_connection``,
no I/O) and turns events into line protocol with ``_generate_event_to_json`` and
influxdb-python's ``make_lines``, as the parity tests do.

    with HAReference("2025.4.4") as ha:
        answer = ha.ask(config_dir, events, env={"DB": "x"})
        answer["lines"], answer["client"]    # or answer["error"] when HA refuses the config
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.support.fixtures_homeassistant import ha_venv_or_skip

WORKER = r"""
import asyncio, inspect, json, os, sys, logging
logging.disable(logging.CRITICAL)
from homeassistant import config as conf_util, loader
from homeassistant.core import Event, HomeAssistant, State
from homeassistant.util import dt as dt_util
import homeassistant.components.influxdb as ha_influx
from influxdb.line_protocol import make_lines

captured = {}
class V1(ha_influx.InfluxDBClient):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        captured["client"] = {"url": self._baseurl, "database": self._database,
                              "username": kwargs.get("username"),
                              "password": kwargs.get("password"), "verify": self._verify_ssl}
class V2(ha_influx.InfluxDBClientV2):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        captured["client"] = {"url": kwargs["url"], "org": kwargs["org"],
                              "token": kwargs["token"], "verify": kwargs["verify_ssl"],
                              "ca": kwargs.get("ssl_ca_cert")}
ha_influx.InfluxDBClient, ha_influx.InfluxDBClientV2 = V1, V2
takes_timestamp = "time_fired_timestamp" in inspect.signature(Event).parameters

def event_of(ev, datetime_attributes):
    new = ev["data"].get("new_state")
    if new:
        new = dict(new, attributes=dict(new.get("attributes") or {}))
        for name in datetime_attributes:       # live HA holds these as datetime objects
            value = new["attributes"].get(name)
            parsed = dt_util.parse_datetime(value) if isinstance(value, str) else None
            if parsed is not None:
                new["attributes"][name] = parsed
    state = State.from_dict(new) if new else None
    fired = dt_util.parse_datetime(ev["time_fired"])
    when = ({"time_fired_timestamp": fired.timestamp()} if takes_timestamp
            else {"time_fired": fired})
    return Event("state_changed", {"entity_id": ev["data"]["entity_id"], "old_state": None,
                                   "new_state": state}, **when)

async def answer(request):
    hass = HomeAssistant(request["dir"])
    loader.async_setup(hass)
    config = await conf_util.async_hass_config_yaml(hass)
    conf = ha_influx.INFLUX_SCHEMA(dict(config["influxdb"]))
    captured.clear()
    ha_influx.get_influx_connection(dict(conf)).close()
    conf_out = {k: v for k, v in conf.items() if isinstance(v, (str, int, float, bool))}
    to_json = ha_influx._generate_event_to_json(conf)
    lines = []
    for ev in request["events"]:
        point = to_json(event_of(ev, request.get("datetime_attributes", [])))
        lines.append(None if point is None else make_lines({"points": [point]}).rstrip("\n"))
    return {"lines": lines, "client": captured.get("client"), "conf": conf_out}

for line in sys.stdin:
    request = json.loads(line)
    saved = dict(os.environ)
    os.environ.update(request.get("env", {}))
    try:
        reply = asyncio.run(answer(request))
    except Exception as exc:
        reply = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        os.environ.clear()
        os.environ.update(saved)
    sys.stdout.write(json.dumps(reply, default=str) + "\n")
    sys.stdout.flush()
"""


class HAReference:
    def __init__(self, version: str):
        self.version = version
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "HAReference":
        python = ha_venv_or_skip(self.version, ("influxdb",)) / "bin" / "python"
        self.proc = subprocess.Popen([str(python), "-c", WORKER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        return self

    def ask(self, config_dir: Path, events: list[dict], env: dict | None = None,
            datetime_attributes: tuple[str, ...] = ("last_triggered",)) -> dict:
        request = {"dir": str(config_dir), "events": events, "env": env or {},
                   "datetime_attributes": list(datetime_attributes)}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        if not reply:
            raise RuntimeError(f"the HA {self.version} reference process exited "
                               f"({self.proc.poll()})")
        return json.loads(reply)

    def __exit__(self, *_exc) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
