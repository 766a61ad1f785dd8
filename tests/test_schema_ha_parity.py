"""Differential test: our state_changed schema against Home Assistant's own code.

Each tested release's ``_generate_event_to_json`` (homeassistant/components/influxdb) runs inside
HA's own virtual environment on the same events and options, and influxdb-python 5.3.1 (what HA
sends with, in every tested release) turns its points into line protocol. Every line must be
byte-for-byte ours: real frames of both releases plus the corner cases of HA's rules (field name
clashes, NaN, digit tails, escaping, on/off states, every measurement option, component_config
precedence, include/exclude).

The events are given to HA as ``State.from_dict`` builds them from JSON, exactly what the
WebSocket carries; ``datetime_attributes`` (which restores HA's own datetime objects) is therefore
off here and checked against a running HA in test_writer_parity_ha.py.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import pytest

from ha_ingestor.config.schema import build_schema
from tests.support.fixtures_homeassistant import ha_venv_or_skip
from tests.test_schema_ha import SAMPLE_EVENTS, state_event
from writer.schema_ha import StateChangedSchemaHA

pytestmark = pytest.mark.realha

HA_SIDE = r"""
import inspect, json, sys
from homeassistant.components.influxdb import INFLUX_SCHEMA, _generate_event_to_json
from homeassistant.core import Event, State
from homeassistant.util import dt as dt_util
from influxdb.line_protocol import make_lines

cases = json.load(sys.stdin)
# 2024.3.3 builds Event(time_fired=datetime), 2025.4.4 Event(time_fired_timestamp=float).
takes_timestamp = "time_fired_timestamp" in inspect.signature(Event).parameters
out = []
for options in cases["configs"]:
    to_json = _generate_event_to_json(INFLUX_SCHEMA(dict(options)))
    lines = []
    for ev in cases["events"]:
        new = ev["data"].get("new_state")
        state = State.from_dict(new) if new else None
        fired = dt_util.parse_datetime(ev["time_fired"])
        when = ({"time_fired_timestamp": fired.timestamp()} if takes_timestamp
                else {"time_fired": fired})
        event = Event("state_changed", {"entity_id": ev["data"]["entity_id"], "old_state": None,
                                        "new_state": state}, **when)
        point = to_json(event)
        lines.append(None if point is None else make_lines({"points": [point]}).rstrip("\n"))
    out.append(lines)
json.dump(out, sys.stdout)
"""

CONFIGS = [
    {},
    {"measurement_attr": "domain__device_class"},
    {"measurement_attr": "entity_id"},
    {"default_measurement": "state"},
    {"override_measurement": "everything"},
    {"tags": {"instance": "prod", "domain": "replaced"},
     "tags_attributes": ["friendly_name", "t_int", "t_float", "t_bool", "t_list", "t_none",
                         "t_empty", "t_space"],
     "ignore_attributes": ["icon", "mode"]},
    {"component_config": {"sensor.temp": {"override_measurement": "exact",
                                          "ignore_attributes": ["a"]}},
     "component_config_glob": {"sensor.t*": {"override_measurement": "glob"},
                               "*.acc_*": {"ignore_attributes": ["friendly_name"]}},
     "component_config_domain": {"sensor": {"override_measurement": "dom"},
                                 "input_boolean": {"override_measurement": ""}}},
    # an exact entry given empty replaces what a glob set (found by tests/test_import_ha.py)
    {"component_config": {"sensor.temp": {"override_measurement": "", "ignore_attributes": []}},
     "component_config_glob": {"sensor.t*": {"override_measurement": "glob",
                                             "ignore_attributes": ["a", "value"]}}},
    {"include": {"domains": ["sensor", "input_number"]}},
    {"exclude": {"entities": ["sensor.temp"], "domains": ["automation"]}},
    {"include": {"entity_globs": ["sensor.t*"], "entities": ["counter.acc_counter"]},
     "exclude": {"entity_globs": ["sensor.te*"], "entities": ["sensor.temp"]}},
    {"include": {"entities": ["sensor.temp", "switch.plug"]},
     "exclude": {"domains": ["sensor"], "entity_globs": ["switch.*"]}},
]


SAMPLES_2025 = Path(__file__).parent / "data" / "ha-samples" / "2025.4.4"


def corner_cases() -> list[dict]:
    events = [copy.deepcopy(e) for name, e in SAMPLE_EVENTS.items()
              if name.startswith("state_changed")]
    events += [json.loads(path.read_text())["event"]      # with last_reported
               for path in sorted(SAMPLES_2025.glob("event_state_changed_*.json"))]
    stamp = "2026-11-27T15:57:48.951097+00:00"
    attrs_tags = {"t_int": 3, "t_float": 2.5, "t_bool": True, "t_list": ["a", "b"],
                  "t_none": None, "t_empty": "", "t_space": "a b,c=d"}
    cases = [
        ("sensor.temp", "21.5", {"unit_of_measurement": "°C", "device_class": "temperature",
                                 "friendly_name": "Temp", **attrs_tags}),
        ("sensor.temp", "5", {"value": 7, "state": "s", "value_str": "x", "a": 1}),
        ("sensor.temp", "text", {"state": "s", "state_": 2}),
        ("sensor.temp", "3", {"n": float("nan"), "i": "inf", "ninf": "-Infinity",
                              "big": 10**20, "neg0": -0.0, "tiny": 1e-300, "e": "1e3",
                              "u": "1_000", "ws": " 42 ", "hexish": "0x10"}),
        ("sensor.temp", "3", {"fw": "firmware 1.2.3", "ver": "v12.5beta", "ip": "10.0.0.1",
                              "dig": "abc123", "one": "7", "date": "2024-03-01"}),
        ("sensor.temp", "3", {"none": None, "yes": True, "no": False, "nested": {"k": [1, "x"]},
                              "lst": [1.5, "two", None], "empty": "", "uni": "äöü°"}),
        ("sensor.temp", 'say "hi"\\ now', {"my key": 'q"uote', "k,=v": "back\\slash",
                                           "nl": "two\nlines"}),
        ("sensor.weird", "1", {"unit_of_measurement": "m,e a=s\\ure"}),
        ("sensor.empty_unit", "4", {"unit_of_measurement": ""}),
        ("sensor.none_unit", "4", {"unit_of_measurement": None, "device_class": None}),
        ("sensor.num_unit", "4", {"unit_of_measurement": 5}),
        ("binary_sensor.door", "on", {"device_class": "door"}),
        ("binary_sensor.door", "off", {"device_class": "door"}),
        ("person.me", "home", {}), ("person.me", "not_home", {}), ("person.me", "work", {}),
        ("cover.blind", "open", {}), ("cover.blind", "closed", {}), ("cover.blind", "opening", {}),
        ("lock.front", "locked", {}), ("lock.front", "unlocked", {}),
        ("sun.sun", "above_horizon", {"elevation": 12.3}), ("sun.sun", "below_horizon", {}),
        ("switch.plug", "on", {"icon": "mdi:power", "mode": "x"}),
        ("sensor.temp", "unknown", {}), ("sensor.temp", "unavailable", {}),
        ("sensor.temp", "-0", {}), ("sensor.temp", "1e400", {"x": 1}),
    ]
    events += [state_event(e, s, a, stamp) for e, s, a in cases]
    removed = state_event("sensor.temp", "1", {}, stamp)
    removed["data"]["new_state"] = None
    events.append(removed)
    return events


def ha_lines(events: list[dict], version: str) -> list[list[str | None]]:
    python = ha_venv_or_skip(version, ("influxdb",)) / "bin" / "python"
    done = subprocess.run([str(python), "-c", HA_SIDE], capture_output=True, text=True,
                          input=json.dumps({"configs": CONFIGS, "events": events}), timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def our_line(conv: StateChangedSchemaHA, event: dict) -> str | None:
    try:
        return conv.to_line(event)
    except ValueError as exc:          # non-finite value: HA would send it and lose the batch
        return f"error: {exc}"


def test_every_line_matches_has_own_integration(ha_version):
    events = corner_cases()
    theirs = ha_lines(events, ha_version)
    differences = []
    for options, their_lines in zip(CONFIGS, theirs):
        ours = StateChangedSchemaHA(build_schema(
            {"state_changed": {**options, "datetime_attributes": []}}).state_changed)
        for event, their in zip(events, their_lines):
            mine = our_line(ours, event)
            if mine != their and not _documented_difference(mine, their):
                differences.append(f"options {options}\n  event {json.dumps(event['data'])}\n"
                                   f"  HA:   {their}\n  ours: {mine}")
    assert not differences, "\n".join(differences[:10])


def _documented_difference(mine: str | None, their: str | None) -> bool:
    """A state that parses as inf/nan: HA puts ``value=inf`` into the batch, InfluxDB rejects
    it with 400 and HA loses the whole batch; we dead-letter that one event instead."""
    return (mine is not None and mine.startswith("error: ") and their is not None
            and any(f"value={x}" in their for x in ("inf", "-inf", "nan")))
