"""docs/schema.md written again as a model, for the property-based suites: for one event, the
point InfluxDB 1.6.7 must hold afterwards (names and values as a query returns them), or that the
event must be a dead letter, or that the schema writes nothing for it.

Written from the document, not from the writer's code: where the two disagree a suite fails and
one of them is wrong. Defaults of ``schema:`` only, plus the MQTT rule the suites configure.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

SECRET_KEYS = frozenset(("code", "pin", "passcode", "password", "passwd", "token",
                         "access_token", "refresh_token", "api_key", "apikey", "secret",
                         "client_secret", "private_key"))
MAX_DEPTH, MAX_FIELDS, MAX_STRING_BYTES = 64, 1000, 1_048_576
DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
ISO_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?([+-]\d{2}:\d{2}|Z)?$")
DIGIT_TAIL = re.compile(r"^[^\.]*\d+\.?\d+[^\.]*$")


@dataclass
class Point:
    measurement: str
    tags: dict[str, str]
    fields: dict[str, object]


@dataclass
class Dead:
    """The event must be in ``queue dead``; its reason matches one of ``why`` (regexes)."""
    why: list[str] = field(default_factory=list)


class Skip:
    """The schema writes nothing for this event and it is no dead letter (documented skips)."""


SKIP = Skip()


class _DeadLetter(Exception):
    def __init__(self, *why: str):
        self.why = list(why)


class RawNumber(str):
    """A JSON number token, as sent."""


# ---- names --------------------------------------------------------------------------------------

def _trailing_backslash(name: str) -> str:
    return name + "_" if re.search(r"\\_*\Z", name) else name


def exact_key(name: str) -> str:
    return name + "_" if re.fullmatch(r"time_*", name) else _trailing_backslash(name)


def exact_measurement(name: str) -> str:
    name = _trailing_backslash(name)
    return "\\" + name if re.match(r"\\*[#\t\x00]", name) else name


def _name_problems(name: str, what: str) -> list[str]:
    found = []
    if not name:
        found.append(f"empty {what}")
    if "\n" in name:
        found.append("holds a newline")
    if _has_surrogate(name):
        found.append("not valid Unicode")
    return found


def _measurement_problems(name: str) -> list[str]:
    found = _name_problems(name, "measurement")
    if re.search(r'\\[, ="]', name):
        found.append("no query finds it")
    return found


def _field_key_problems(fields: dict) -> list[str]:
    found = []
    for key in fields:
        found += _name_problems(key, "field name")
        if re.search(r'(?<!\\)(?:\\\\)*\\[ ,=]', key):
            found.append("backslash before a space")
    if fields and all(k[:1] in ("\t", "\x00") for k in fields):
        found.append("tab or NUL")
    return found


def _value_problems(fields: dict) -> list[str]:
    return ["not valid Unicode" for value in fields.values()
            if isinstance(value, str) and _has_surrogate(value)][:1]


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in text)


def ha_stored(name: str) -> str:
    """A name of a state_changed point as InfluxDB stores HA's escaping (measurement, tags)."""
    return name.replace("\\", "\\\\").replace("\n", "\\n")


def ha_stored_field_key(name: str) -> str:
    """Field keys: InfluxDB reads a backslash before '"' as an escape."""
    return re.sub(r'\\(?!")', r"\\\\", name).replace("\n", "\\n")


# ---- JSON values → fields (MQTT payloads, HA event data) ----------------------------------------

LIMITS = ("deeper than", "nested too deeply", "max_fields", "max_string_bytes")


def parse_json(text: str):
    """Numbers as their tokens; raises ValueError (not JSON) or _DeadLetter (too deep)."""
    try:
        return json.loads(text, parse_int=RawNumber, parse_float=RawNumber,
                          parse_constant=RawNumber)
    except RecursionError:
        raise _DeadLetter(*LIMITS) from None


def _depth(value, level: int = 0) -> int:
    if isinstance(value, dict):
        return max([_depth(v, level + 1) for v in value.values()] or [level + 1])
    if isinstance(value, list):
        return max([_depth(v, level + 1) for v in value] or [level + 1])
    return level


def _plain(value):
    """A decoded list as Python's json module holds it: ints up to 4300 digits, other numbers
    floats."""
    if type(value) is RawNumber:
        if re.fullmatch(r"-?[0-9]+", value) and len(value.lstrip("-")) <= 4300:
            return int(value)
        return float(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _number(token: str):
    number = float(token)
    return number if math.isfinite(number) else None


class Fields:
    def __init__(self, secret=frozenset()):
        self.fields: dict[str, object] = {}
        self.secret = secret

    def put(self, key: str, value) -> None:
        if isinstance(value, str) and len(value.encode("utf-8", "surrogatepass")) > \
                MAX_STRING_BYTES:
            raise _DeadLetter(*LIMITS)
        if len(self.fields) >= MAX_FIELDS:
            raise _DeadLetter(*LIMITS)
        name = exact_key(key)
        while name in self.fields:
            name += "_"
        self.fields[name] = value

    def add(self, key: str | None, value, level: int = 0) -> None:
        if isinstance(value, bool):
            self.put(key, 1.0 if value else 0.0)
        elif type(value) is RawNumber:
            number = _number(value)
            if number is None:
                self.put(f"{key}_str", str(value))
            else:
                self.put(key, number)
        elif isinstance(value, str):
            self.put(f"{key or ''}_str", value)
        elif isinstance(value, (int, float)):          # decoded by an HA frame's parser
            try:
                self.put(key, float(value))
            except OverflowError:                      # an integer beyond 1.8e308: its digits
                self.put(f"{key}_str", str(value))
        elif isinstance(value, dict):
            if level >= MAX_DEPTH:                    # this object would be level + 1
                raise _DeadLetter(*LIMITS)
            prefix = "" if key is None else key + "_"
            for inner, inner_value in value.items():
                if inner.lower() in self.secret:
                    continue
                self.add(prefix + inner, inner_value, level + 1)
        elif isinstance(value, list):
            if _depth(value) + level > MAX_DEPTH:
                raise _DeadLetter(*LIMITS)
            self.put(f"{key}_str", json.dumps(_plain(value), ensure_ascii=False,
                                              separators=(",", ":")))


def json_fields(data, key: str | None, secret=frozenset(), into: dict | None = None) -> dict:
    rule = Fields(secret)
    rule.fields = dict(into or {})
    rule.add(key, data)
    return rule.fields


def value_fields(text: str, key: str = "value") -> dict:
    stripped = text.strip(" \t\r\n\f\v")
    if DECIMAL.fullmatch(stripped):
        number = _number(stripped)
        if number is not None:
            return {exact_key(key): number}
    rule = Fields()
    rule.put(f"{key}_str", text)
    return rule.fields


# ---- MQTT ---------------------------------------------------------------------------------------

def mqtt_payload_fields(payload: bytes) -> dict:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise _DeadLetter("not UTF-8") from None
    if text.lstrip(" \t\r\n")[:1] in ("{", "[", '"'):
        try:
            data = parse_json(text)
        except ValueError:
            return value_fields(text)
        if isinstance(data, str) and type(data) is not RawNumber:
            return value_fields(data)
        return json_fields(data, None if isinstance(data, dict) else "value")
    return value_fields(text)


def mqtt_point(topic: str, payload: bytes, measurement: str, tags: dict) -> Point | Dead:
    """A message under the suite's rule: measurement and tags given by the rule, plus
    ``topic`` and ``retained``."""
    try:
        fields = mqtt_payload_fields(payload)
        if not fields:
            raise _DeadLetter("nothing to write")
        problems = (_measurement_problems(measurement) + _field_key_problems(fields)
                    + _value_problems(fields))
        if problems:
            raise _DeadLetter(*problems)
        tags = {**tags, "topic": topic, "retained": "false"}
        return Point(exact_measurement(measurement),
                     {k: _trailing_backslash(v) for k, v in tags.items() if v}, fields)
    except _DeadLetter as dead:
        return Dead(dead.why)


# ---- HA events other than state_changed ---------------------------------------------------------

def time_ns(iso: str) -> int:
    stamp = datetime.fromisoformat(iso)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    delta = stamp - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 10**9 + delta.microseconds * 1000


def event_point(event: dict) -> Point | Dead:
    try:
        data = event.get("data") or {}
        tags = {"event_type": event["event_type"]}
        for key in ("domain", "service", "entity_id"):
            if isinstance(data.get(key), str):
                tags[key] = data[key]
        if "entity_id" not in tags:
            service_data = data.get("service_data")
            ids = service_data.get("entity_id") if isinstance(service_data, dict) else None
            for candidate in (data.get("entity_id"), ids):
                if isinstance(candidate, str) and candidate:
                    tags["entity_id"] = candidate
                    break
                if isinstance(candidate, list) and candidate and \
                        all(isinstance(c, str) for c in candidate):
                    tags["entity_id"] = ",".join(candidate)
                    break
        fields: dict[str, object] = {"fired": 1.0}
        for key in ("id", "parent_id", "user_id"):
            value = (event.get("context") or {}).get(key)
            if isinstance(value, str):
                fields[f"context_{key}_str"] = value
        rest = {k: v for k, v in data.items()
                if not (k in ("domain", "service", "entity_id") and isinstance(v, str))}
        fields = json_fields(rest, None, SECRET_KEYS, into=fields)
        problems = [p for value in tags.values() if value
                    for p in _name_problems(value, "tag value")]
        problems += _field_key_problems(fields) + _value_problems(fields)
        if problems:
            raise _DeadLetter(*problems)
        return Point("ha_events", {k: _trailing_backslash(v) for k, v in tags.items() if v},
                     fields)
    except _DeadLetter as dead:
        return Dead(dead.why)


# ---- state_changed (Home Assistant's rules, default options) ------------------------------------

STATE_ONE = ("on", "locked", "above_horizon", "open", "home")
STATE_ZERO = ("off", "unlocked", "unknown", "below_horizon", "closed", "not_home")


def _state_number(state: str):
    try:
        return float(state)
    except ValueError:
        if state in STATE_ONE:
            return 1.0
        if state in STATE_ZERO:
            return 0.0
        return None


class HaFields:
    """HA's insertion, with the documented change: a taken, empty, ``time`` or
    backslash-ending name gets ``_`` until it can be stored and is free."""

    def __init__(self):
        self.fields: dict[str, object] = {}

    def put(self, key: str, value) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            return
        if isinstance(value, str) and len(value.encode("utf-8", "surrogatepass")) > \
                MAX_STRING_BYTES:
            raise _DeadLetter(*LIMITS)
        if key in self.fields or key in ("time", "") or key.endswith("\\"):
            if key.endswith("\\"):
                key += "_"
            while key in self.fields or key in ("time", ""):
                key += "_"
        if len(self.fields) >= MAX_FIELDS:
            raise _DeadLetter(*LIMITS)
        self.fields[key] = value


def _attribute(out: HaFields, key: str, value) -> None:
    if key == "last_triggered" and isinstance(value, str) and ISO_DATETIME.match(value):
        value = value.replace("T", " ", 1)
    if key in out.fields:
        key = f"{key}_"
    if isinstance(value, str):
        try:
            out.put(key, float(value))
            return
        except ValueError:
            pass
        out.put(f"{key}_str", value)
        if DIGIT_TAIL.match(value):
            out.put(key, float(re.sub(r"[^\d.]+", "", value)))
        return
    try:
        out.put(key, float(value))
    except (ValueError, TypeError, OverflowError):
        text = str(value)
        out.put(f"{key}_str", text)
        if DIGIT_TAIL.match(text):
            out.put(key, float(re.sub(r"[^\d.]+", "", text)))


def state_changed_point(event: dict) -> Point | Dead | Skip:
    new = event["data"].get("new_state")
    if new is None or new.get("state") in ("unknown", "unavailable", ""):
        return SKIP
    try:
        state, entity_id = new["state"], new["entity_id"]
        domain, object_id = entity_id.split(".", 1)
        attributes = new.get("attributes") or {}
        unit = attributes.get("unit_of_measurement")
        measurement = entity_id if unit in (None, "") else str(unit)
        out = HaFields()
        number = _state_number(state)
        try:
            float(state)
            numeric = True
        except ValueError:
            numeric = False
        if not numeric:
            out.put("state", state)
        if number is not None:
            out.fields["value"] = number
        for key, value in attributes.items():
            if key == "unit_of_measurement" and unit not in (None, ""):
                continue
            _attribute(out, key, value)
        problems = []
        if _has_surrogate(measurement) or any(_has_surrogate(k) for k in out.fields):
            problems.append("not valid Unicode")
        if re.search(r'\\[, ="]', measurement):
            problems.append("no query finds it")
        if all(k[:1] in ("\t", "\x00") for k in out.fields):
            problems.append("tab or NUL")
        problems += _value_problems(out.fields)
        if math.isnan(out.fields.get("value", 0.0)) or math.isinf(out.fields.get("value", 0.0)):
            problems.append("finite")
        if problems:
            raise _DeadLetter(*problems)
        stored_measurement = ha_stored(measurement + ("_" if measurement.endswith("\\") else ""))
        if measurement[:1] in ("#", "\t", "\x00"):
            stored_measurement = "\\" + stored_measurement
        fields = {ha_stored_field_key(k): (v.replace("\n", "\\n") if isinstance(v, str) else v)
                  for k, v in out.fields.items()}
        return Point(stored_measurement, {"domain": ha_stored(domain),
                                          "entity_id": ha_stored(object_id)}, fields)
    except _DeadLetter as dead:
        return Dead(dead.why)
