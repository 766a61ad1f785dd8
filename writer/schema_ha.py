"""``state_changed`` → the point Home Assistant's own ``influxdb`` integration writes.

A line-by-line port of ``event_to_json`` in HA 2024.3.3 (``homeassistant/components/influxdb``),
of the entity filter it uses (``helpers/entityfilter.py``), of ``EntityValues`` (the
``component_config*`` lookup) and of ``state_helper.state_as_number``, applied to the event as the
WebSocket API delivers it. The only input HA has and we do not is the Python type of an attribute
(the WebSocket sends JSON); ``datetime_attributes`` restores the one that shows in the data
(``str(datetime)`` uses a space where ``isoformat`` has a ``T``). See docs/schema.md.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from typing import Any, Callable

from ha_ingestor.config.schema import EntityFilter, EntityOverride, StateChangedSchema, \
    glob_to_regex
from writer.lineprotocol import make_line

STATE_UNKNOWN = "unknown"
STATE_UNAVAILABLE = "unavailable"
_SKIPPED_STATES = (STATE_UNKNOWN, "", STATE_UNAVAILABLE, None)
# helpers/state.py state_as_number (sun's above/below_horizon included)
_STATE_ONE = ("on", "locked", "above_horizon", "open", "home")
_STATE_ZERO = ("off", "unlocked", "unknown", "below_horizon", "closed", "not_home")
# homeassistant/components/influxdb/const.py
RE_DIGIT_TAIL = re.compile(r"^[^\.]*\d+\.?\d+[^\.]*$")
RE_DECIMAL = re.compile(r"[^\d.]+")
_ISO_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?([+-]\d{2}:\d{2}|Z)?$")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MAX_CACHED_ENTITIES = 16384


def time_to_ns(text: str) -> int:
    """An HA timestamp (``2024-03-01T10:00:00.123456+00:00``) as integer ns since the epoch,
    exact (influxdb-python's ``_to_nanos`` does the same integer arithmetic)."""
    stamp = datetime.fromisoformat(text)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    delta = stamp - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def state_as_number(state: str) -> float:
    """``helpers.state.state_as_number``; raises ValueError for anything else non-numeric."""
    if state in _STATE_ONE:
        return 1
    if state in _STATE_ZERO:
        return 0
    return float(state)


def split_entity_id(entity_id: str) -> tuple[str, str]:
    domain, sep, object_id = entity_id.partition(".")
    if not sep or not domain or not object_id:
        raise ValueError(f"invalid entity id {entity_id!r}")
    return domain, object_id


def build_entity_filter(include: EntityFilter, exclude: EntityFilter) -> Callable[[str], bool]:
    """``helpers.entityfilter`` (HA 2024.3): the same six cases, in the same order."""
    include_d, include_e = set(include.domains), set(include.entities)
    exclude_d, exclude_e = set(exclude.domains), set(exclude.entities)
    include_eg, exclude_eg = _globs(include.entity_globs), _globs(exclude.entity_globs)
    have_include = bool(include_e or include_d or include_eg)
    have_exclude = bool(exclude_e or exclude_d or exclude_eg)

    def domain(entity_id: str) -> str:
        return split_entity_id(entity_id)[0]

    if not have_include and not have_exclude:
        return lambda entity_id: True
    if have_include and not have_exclude:
        return lambda entity_id: (entity_id in include_e or domain(entity_id) in include_d
                                  or bool(include_eg and include_eg.match(entity_id)))
    if not have_include and have_exclude:
        return lambda entity_id: not (entity_id in exclude_e or domain(entity_id) in exclude_d
                                      or bool(exclude_eg and exclude_eg.match(entity_id)))
    if include_d or include_eg:
        return lambda entity_id: entity_id in include_e or (
            entity_id not in exclude_e and (
                bool(include_eg and include_eg.match(entity_id))
                or (domain(entity_id) in include_d
                    and not (exclude_eg and exclude_eg.match(entity_id)))))
    if exclude_d or exclude_eg:
        def entity_filter_4b(entity_id: str) -> bool:
            if domain(entity_id) in exclude_d or bool(exclude_eg and exclude_eg.match(entity_id)):
                return entity_id in include_e
            return entity_id not in exclude_e
        return entity_filter_4b
    return lambda entity_id: entity_id in include_e


def _globs(globs: tuple[str, ...]) -> re.Pattern | None:
    patterns = [glob_to_regex(g) for g in set(globs)]
    patterns = [p for p in patterns if p]
    return re.compile(f"(?:{'|'.join(patterns)})") if patterns else None


class EntityConfig:
    """``EntityValues``: domain entries, then every matching glob in order, then the exact id."""

    def __init__(self, exact, domain, glob):
        self._exact = dict(exact)
        self._domain = dict(domain)
        self._glob = [(re.compile(glob_to_regex(k)), v) for k, v in glob]
        self._cache: dict[str, dict[str, Any]] = {}

    def get(self, entity_id: str) -> dict[str, Any]:
        found = self._cache.get(entity_id)
        if found is None:
            found = self._lookup(entity_id)
            if len(self._cache) >= _MAX_CACHED_ENTITIES:
                self._cache.clear()
            self._cache[entity_id] = found
        return found

    def _lookup(self, entity_id: str) -> dict[str, Any]:
        result: dict[str, Any] = {}
        domain = split_entity_id(entity_id)[0]
        for override in ([self._domain.get(domain)]
                         + [v for pattern, v in self._glob if pattern.match(entity_id)]
                         + [self._exact.get(entity_id)]):
            if override is not None:
                _merge(result, override)
        return result


def _merge(result: dict[str, Any], override: EntityOverride) -> None:
    # EntityValues merges the voluptuous-validated dicts, which hold only the keys that were set
    if override.override_measurement is not None:
        result["override_measurement"] = override.override_measurement
    if override.ignore_attributes is not None:
        result["ignore_attributes"] = override.ignore_attributes


class StateChangedSchemaHA:
    """Turns one HA ``state_changed`` event (the ``event`` object) into one line, or None when
    HA's integration would not write it."""

    def __init__(self, config: StateChangedSchema):
        self.config = config
        self.entity_filter = build_entity_filter(config.include, config.exclude)
        self.tags = dict(config.tags)
        self.tags_attributes = set(config.tags_attributes)
        self.global_ignore = set(config.ignore_attributes)
        self.datetime_attributes = set(config.datetime_attributes)
        self.component_config = EntityConfig(config.component_config,
                                             config.component_config_domain,
                                             config.component_config_glob)

    def to_line(self, event: dict[str, Any]) -> str | None:
        point = self.to_point(event)
        if point is None:
            return None
        return make_line(*point)

    def to_point(self, event: dict[str, Any]) -> tuple[str, dict, dict, int] | None:
        """(measurement, tags, fields, time_ns), as ``event_to_json`` builds it."""
        state = event["data"].get("new_state")
        if state is None:
            return None
        state_value = state.get("state")
        entity_id = state["entity_id"]
        if state_value in _SKIPPED_STATES or not self.entity_filter(entity_id):
            return None
        attributes = state.get("attributes") or {}
        domain, object_id = split_entity_id(entity_id)

        include_state, include_value, state_as_value = _state_fields(state_value)

        entity_config = self.component_config.get(entity_id)
        measurement, include_uom, include_dc = self._measurement(
            entity_config, entity_id, domain, attributes)

        tags: dict[str, Any] = {"domain": domain, "entity_id": object_id}
        fields: dict[str, Any] = {}
        if include_state:
            fields["state"] = state_value
        if include_value:
            fields["value"] = state_as_value
        ignore = set(entity_config.get("ignore_attributes", ()))
        ignore.update(self.global_ignore)
        for key, value in attributes.items():
            if key in self.tags_attributes:
                tags[key] = value
            elif ((key != "unit_of_measurement" or include_uom)
                  and (key != "device_class" or include_dc) and key not in ignore):
                self._add_attribute(fields, key, value)
        tags.update(self.tags)
        return (str(measurement), _tag_strings(tags), fields, time_to_ns(event["time_fired"]))

    def _measurement(self, entity_config: dict, entity_id: str, domain: str,
                     attributes: dict) -> tuple[Any, bool, bool]:
        include_uom = include_dc = True
        measurement = entity_config.get("override_measurement")
        if measurement not in (None, ""):
            return measurement, include_uom, include_dc
        config = self.config
        if config.override_measurement:
            return config.override_measurement, include_uom, include_dc
        attr = config.measurement_attr
        if attr == "entity_id":
            measurement = entity_id
        elif attr == "domain__device_class":
            device_class = attributes.get("device_class")
            if device_class is None:
                measurement = domain
            else:
                measurement = f"{domain}__{device_class}"
                include_dc = False
        else:
            measurement = attributes.get(attr)
        if measurement in (None, ""):
            measurement = config.default_measurement or entity_id
        else:
            include_uom = attr != "unit_of_measurement"
        return measurement, include_uom, include_dc

    def _add_attribute(self, fields: dict, key: str, value: Any) -> None:
        if key in self.datetime_attributes and type(value) is str and _ISO_DATETIME.match(value):
            value = value.replace("T", " ", 1)
        if key in fields:
            key = f"{key}_"
        if type(value) is str:
            number, digit_tail = _string_attribute(value)
            if number is not None:
                fields[key] = number
            else:
                fields[f"{key}_str"] = value
                if digit_tail is not None:
                    fields[key] = digit_tail
        else:
            try:
                fields[key] = float(value)
            except (ValueError, TypeError, OverflowError):
                new_value = str(value)
                fields[f"{key}_str"] = new_value
                if RE_DIGIT_TAIL.match(new_value):
                    fields[key] = float(RE_DECIMAL.sub("", new_value))
        number = fields.get(key)
        if type(number) is float and not math.isfinite(number):
            del fields[key]


def _state_fields(state: str) -> tuple[bool, bool, float | None]:
    """(include ``state``, include ``value``, value) as ``event_to_json`` decides them; cached,
    since states repeat and a failed ``float()`` is slow."""
    found = _STATES.get(state)
    if found is None:
        try:
            found = (False, True, float(state))
        except ValueError:
            try:
                found = (True, True, float(state_as_number(state)))
            except ValueError:
                found = (True, False, None)
        if len(_STATES) >= _MAX_CACHED_VALUES:
            _STATES.clear()
        _STATES[state] = found
    return found


def _string_attribute(value: str) -> tuple[float | None, float | None]:
    """For a string attribute: (``float(value)`` or None, the digit-tail number or None)."""
    found = _STRINGS.get(value)
    if found is None:
        try:
            found = (float(value), None)
        except ValueError:
            found = (None, float(RE_DECIMAL.sub("", value)) if RE_DIGIT_TAIL.match(value)
                     else None)
        if len(_STRINGS) >= _MAX_CACHED_VALUES:
            _STRINGS.clear()
        _STRINGS[value] = found
    return found


_MAX_CACHED_VALUES = 100_000
_STATES: dict[str, tuple] = {}
_STRINGS: dict[str, tuple] = {}


def _tag_strings(tags: dict[str, Any]) -> dict[str, str]:
    """influxdb-python writes ``str(value)`` for a tag and leaves out None and empty values."""
    return {str(k): ("" if v is None else v if type(v) is str else str(v))
            for k, v in tags.items()}
