"""``state_changed`` → the point Home Assistant's own ``influxdb`` integration writes.

A line-by-line port of ``event_to_json`` in HA 2024.3.3 (``homeassistant/components/influxdb``),
of the entity filter it uses (``helpers/entityfilter.py``), of ``EntityValues`` (the
``component_config*`` lookup) and of ``state_helper.state_as_number``, applied to the event as the
WebSocket API delivers it. The only input HA has and we do not is the Python type of an attribute
(the WebSocket sends JSON); ``datetime_attributes`` restores the one that shows in the data
(``str(datetime)`` uses a space where ``isoformat`` has a ``T``). See docs/schema.md.

Where HA's own line would lose data, this one does not (docs/schema.md, "Where we differ from
HA"): a field name that is taken, ``time`` or empty gets ``_`` appended until it can be stored and
is unused (HA appends one ``_`` to a taken name and may overwrite a field), names ending in a
backslash and measurements starting with ``#`` are mapped (``writer.names``), and the limits of
``schema.limits`` hold.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Callable

from ha_ingestor.config.schema import EntityFilter, EntityOverride, SchemaLimits, \
    StateChangedSchema, glob_to_regex
from ha_ingestor.errors import ConversionError
from ha_ingestor.memo import Memo
from writer.lineprotocol import HA, make_line
from writer.names import ha_stored_name

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
_CANNOT_STORE = ("time", "")       # InfluxDB drops a field called time and refuses an empty name


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
        self._found = Memo(self._lookup, _MAX_CACHED_ENTITIES)

    def get(self, entity_id: str) -> dict[str, Any]:
        return self._found[entity_id]

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

    def __init__(self, config: StateChangedSchema, limits: SchemaLimits = SchemaLimits()):
        self.config = config
        self.max_fields = limits.max_fields
        self.max_string_bytes = limits.max_string_bytes
        self.short_text = limits.max_string_bytes // 4     # shorter text is within the limit
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
        return make_line(*point, dialect=HA)

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
            if len(state_value) > self.short_text:
                self._put(fields, "state", state_value)
            else:
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
        if len(fields) > self.max_fields:
            raise ConversionError(f"more than schema.limits.max_fields ({self.max_fields}) "
                                  "fields", "limit")
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
                if key in fields or key in _CANNOT_STORE or key[-1:] == "\\" or \
                        number - number != 0.0:
                    self._put(fields, key, number)
                else:
                    fields[key] = number        # the usual case, without a call
                return
            name = f"{key}_str"
            if name in fields or len(value) > self.short_text:
                self._put(fields, name, value)
            else:
                fields[name] = value
            if digit_tail is not None:
                if key in fields or key in _CANNOT_STORE or key[-1:] == "\\":
                    self._put(fields, key, digit_tail)
                else:
                    fields[key] = digit_tail
        else:
            try:
                self._put(fields, key, float(value))
            except (ValueError, TypeError, OverflowError):
                new_value = str(value)
                self._put(fields, f"{key}_str", new_value)
                if RE_DIGIT_TAIL.match(new_value):
                    self._put(fields, key, float(RE_DECIMAL.sub("", new_value)))

    def _put(self, fields: dict, key: str, value: float | str) -> None:
        """``fields[key] = value`` as HA does, except where HA's line would lose data: a field
        name that is taken, ``time``, empty or ends in a backslash gets ``_`` appended until it
        can be stored and is unused; NaN and infinity are left out (as HA does); the limits."""
        if type(value) is float and value - value != 0.0:
            return
        if type(value) is str and len(value) * 4 > self.max_string_bytes and \
                len(value.encode("utf-8", "surrogatepass")) > self.max_string_bytes:
            raise ConversionError(f"field {key[:200]!r} is longer than schema.limits."
                                  f"max_string_bytes ({self.max_string_bytes} bytes)", "limit")
        if key in fields or key in _CANNOT_STORE or key[-1:] == "\\":
            key = ha_stored_name(key)
            while key in fields or key in _CANNOT_STORE:
                key += "_"
        fields[key] = value


def _state_fields_of(state: str) -> tuple[bool, bool, float | None]:
    """(include ``state``, include ``value``, value) as ``event_to_json`` decides them; memoised,
    since states repeat and a failed ``float()`` is slow."""
    try:
        return (False, True, float(state))
    except ValueError:
        try:
            return (True, True, float(state_as_number(state)))
        except ValueError:
            return (True, False, None)


def _string_attribute_of(value: str) -> tuple[float | None, float | None]:
    """For a string attribute: (``float(value)`` or None, the digit-tail number or None)."""
    try:
        return (float(value), None)
    except ValueError:
        return (None, float(RE_DECIMAL.sub("", value)) if RE_DIGIT_TAIL.match(value) else None)


_MAX_CACHED_VALUES = 100_000
_STATES = Memo(_state_fields_of, _MAX_CACHED_VALUES)
_STRINGS = Memo(_string_attribute_of, _MAX_CACHED_VALUES)


def _state_fields(state: str) -> tuple[bool, bool, float | None]:
    return _STATES[state]


def _string_attribute(value: str) -> tuple[float | None, float | None]:
    return _STRINGS[value]


def _tag_strings(tags: dict[str, Any]) -> dict[str, str]:
    """influxdb-python writes ``str(value)`` for a tag and leaves out None and empty values."""
    return {str(k): ("" if v is None else v if type(v) is str else str(v))
            for k, v in tags.items()}
