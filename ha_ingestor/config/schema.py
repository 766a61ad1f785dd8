"""The ``schema:`` section: how events become InfluxDB points (read by the writer only).

Three parts, each optional::

    schema:
      state_changed:         # Home Assistant's own influxdb integration options, same names
        include: {domains: [], entities: [], entity_globs: []}
        exclude: {domains: [], entities: [], entity_globs: []}
        measurement_attr: unit_of_measurement   # or domain__device_class, entity_id
        default_measurement: null
        override_measurement: null
        tags: {}
        tags_attributes: []
        ignore_attributes: []
        component_config: {sensor.x: {override_measurement: .., ignore_attributes: [..]}}
        component_config_domain: {}
        component_config_glob: {}
        datetime_attributes: [last_triggered]
      events:                # every other HA event type
        enabled: true
        measurement: ha_events
        include: []          # event types; empty = all
        exclude: []
        secret_keys: [code, pin, password, ...]   # data keys never written (any depth)
      mqtt:
        presets: []          # zigbee2mqtt, tasmota, esphome, mqtt_statestream
        rules: []            # {topic, measurement, tags, format, field, match, skip}
        measurement: mqtt    # for topics no rule matches
        format: auto         # json, value or auto
        topic_tag: topic
        retain_tag: retained
        bools: float         # float (1.0/0.0) or string
      statistics:            # rows of `ha-ingestor import statistics`
        measurement: null    # null: the statistic's unit, as HA names state measurements
        default_measurement: null   # when it has no unit; null: the statistic_id
        tags: {}             # added to every point
      limits:                # beyond these an event is a dead letter
        max_depth: 64        # JSON nesting
        max_fields: 1000     # fields in one point
        max_string_bytes: 1MiB

Built once at start-up into frozen dataclasses; every error names the dotted key and the value.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any

from ha_ingestor import topicfilter
from ha_ingestor.config.values import (as_bool, as_choice, as_int, as_mapping, as_opt_str,
                                       as_size, as_str, as_str_list, fail)
from ha_ingestor.errors import ConfigError

MEASUREMENT_ATTRS = ("unit_of_measurement", "domain__device_class", "entity_id")
MQTT_FORMATS = ("json", "value", "auto")
MQTT_PRESETS = ("zigbee2mqtt", "tasmota", "esphome", "mqtt_statestream")
MQTT_BOOLS = ("float", "string")
# Keys of event data that hold credentials (alarm and lock codes in call_service, ...)
SECRET_KEYS = ("code", "pin", "passcode", "password", "passwd", "token", "access_token",
               "refresh_token", "api_key", "apikey", "secret", "client_secret", "private_key")
RESERVED_TAG_KEYS = ("time",)       # InfluxDB refuses a tag called time
_TEMPLATE_REF = re.compile(r"\{([^{}]*)\}")
_ENTITY_ID = re.compile(r"^(?!.+__)(?!_)[\da-z_]+(?<!_)\.(?!_)[\da-z_]+(?<!_)$")


@dataclass(frozen=True)
class EntityFilter:
    domains: tuple[str, ...] = ()
    entities: tuple[str, ...] = ()
    entity_globs: tuple[str, ...] = ()


@dataclass(frozen=True)
class EntityOverride:
    """One ``component_config*`` entry. None: not given here (a less specific entry's value
    stays); given, even empty (``""``, ``[]``), it replaces that value, as in HA."""

    override_measurement: str | None = None
    ignore_attributes: tuple[str, ...] | None = None


@dataclass(frozen=True)
class StateChangedSchema:
    """HA's influxdb integration options; the defaults are HA's defaults."""

    enabled: bool = True
    include: EntityFilter = EntityFilter()
    exclude: EntityFilter = EntityFilter()
    measurement_attr: str = "unit_of_measurement"
    default_measurement: str | None = None
    override_measurement: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    tags_attributes: tuple[str, ...] = ()
    ignore_attributes: tuple[str, ...] = ()
    component_config: tuple[tuple[str, EntityOverride], ...] = ()
    component_config_domain: tuple[tuple[str, EntityOverride], ...] = ()
    component_config_glob: tuple[tuple[str, EntityOverride], ...] = ()
    # Attributes HA holds as datetime objects: HA's integration writes str(datetime) ("2024-03-01
    # 10:00:00+00:00") while the WebSocket carries isoformat ("...T..."); these are converted back.
    datetime_attributes: tuple[str, ...] = ("last_triggered",)


@dataclass(frozen=True)
class EventsSchema:
    enabled: bool = True
    measurement: str = "ha_events"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    secret_keys: tuple[str, ...] = SECRET_KEYS


@dataclass(frozen=True)
class MqttRule:
    """``topic``: MQTT filter whose ``+``/``#`` may carry a name (``+device``, ``#rest``);
    ``measurement``, tag values and ``field`` are templates over those names and ``{topic}``."""

    topic: str
    measurement: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    format: str | None = None
    field: str = "value"
    match: tuple[tuple[str, tuple[str, ...]], ...] = ()
    skip: bool = False


@dataclass(frozen=True)
class MqttPreset:
    name: str
    prefix: str | None = None


@dataclass(frozen=True)
class MqttSchema:
    enabled: bool = True
    presets: tuple[MqttPreset, ...] = ()
    rules: tuple[MqttRule, ...] = ()
    measurement: str = "mqtt"
    format: str = "auto"
    topic_tag: str | None = "topic"
    retain_tag: str | None = "retained"
    bools: str = "float"
    separator: str = "_"


@dataclass(frozen=True)
class SchemaLimits:
    """Beyond these an event is a dead letter naming the limit (docs/schema.md, "Limits")."""

    max_depth: int = 64                 # JSON nesting (objects and lists) that is flattened
    max_fields: int = 1000              # fields in one point
    max_string_bytes: int = 1_048_576   # one string field, UTF-8


@dataclass(frozen=True)
class StatisticsSchema:
    """Long-term statistics rows (docs/import.md, "Statistics in InfluxDB")."""

    measurement: str | None = None          # None: the unit of the statistic
    default_measurement: str | None = None  # None: the statistic_id (a statistic without unit)
    tags: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class SchemaConfig:
    state_changed: StateChangedSchema = field(default_factory=StateChangedSchema)
    events: EventsSchema = field(default_factory=EventsSchema)
    mqtt: MqttSchema = field(default_factory=MqttSchema)
    limits: SchemaLimits = field(default_factory=SchemaLimits)
    statistics: StatisticsSchema = field(default_factory=StatisticsSchema)


def build_schema(raw: dict | None, key_prefix: str = "schema") -> SchemaConfig:
    """Validate the ``schema:`` mapping. Raises ConfigError naming the dotted key and value."""
    raw = as_mapping(key_prefix, raw)
    _no_unknown(key_prefix, raw, ("state_changed", "events", "mqtt", "limits", "statistics"))
    return SchemaConfig(
        statistics=_statistics(f"{key_prefix}.statistics", raw.get("statistics")),
        state_changed=_state_changed(f"{key_prefix}.state_changed", raw.get("state_changed")),
        events=_events(f"{key_prefix}.events", raw.get("events")),
        mqtt=_mqtt(f"{key_prefix}.mqtt", raw.get("mqtt")),
        limits=_limits(f"{key_prefix}.limits", raw.get("limits")))


def _limits(key: str, raw: Any) -> SchemaLimits:
    raw = as_mapping(key, raw)
    _no_unknown(key, raw, ("max_depth", "max_fields", "max_string_bytes"))
    defaults = SchemaLimits()
    return SchemaLimits(
        max_depth=as_int(f"{key}.max_depth", raw.get("max_depth", defaults.max_depth), 1, 500),
        max_fields=as_int(f"{key}.max_fields", raw.get("max_fields", defaults.max_fields), 1),
        max_string_bytes=as_size(f"{key}.max_string_bytes",
                                 raw.get("max_string_bytes", defaults.max_string_bytes), 1))


def _statistics(key: str, raw: Any) -> StatisticsSchema:
    raw = as_mapping(key, raw)
    _no_unknown(key, raw, ("measurement", "default_measurement", "tags"))
    pairs = _tag_pairs(f"{key}.tags", raw.get("tags"))
    taken = [name for name, _ in pairs if name in STATISTICS_TAGS]
    if taken:
        raise ConfigError(f"{key}.tags.{taken[0]}: every statistics point has this tag already "
                          f"({', '.join(STATISTICS_TAGS)})")
    return StatisticsSchema(
        measurement=as_opt_str(f"{key}.measurement", raw.get("measurement")),
        default_measurement=as_opt_str(f"{key}.default_measurement",
                                       raw.get("default_measurement")),
        tags=pairs)


STATISTICS_TAGS = ("statistic_id", "entity_id", "domain", "period", "source")


def _tag_names(key: str, names: tuple[str, ...]) -> tuple[str, ...]:
    """Tag names InfluxDB can store: not empty, not ``time``, not ending in a backslash."""
    for name in names:
        if not name or name in RESERVED_TAG_KEYS or name.endswith("\\") or "\n" in name:
            raise fail(key, "tag names InfluxDB can store (not empty, not 'time', no newline, "
                            "no trailing backslash)", name)
    return names


def _no_unknown(key: str, raw: dict, known: tuple[str, ...], hint: str = "") -> None:
    unknown = [k for k in raw if k not in known]
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: unknown key (known: {', '.join(known)}){hint}")


# ---- state_changed ------------------------------------------------------------------------------

STATE_CHANGED_KEYS = ("enabled", "include", "exclude", "measurement_attr",
                      "default_measurement", "override_measurement", "tags", "tags_attributes",
                      "ignore_attributes", "component_config", "component_config_domain",
                      "component_config_glob", "datetime_attributes")
# HA's influxdb: connection options (refused in schema.state_changed with a pointer to influxdb:).
CONNECTION_KEYS = ("host", "port", "path", "ssl", "verify_ssl", "ssl_ca_cert", "api_version",
                   "username", "password", "database", "token", "organization", "bucket",
                   "precision", "max_retries")


def _state_changed(key: str, raw: Any) -> StateChangedSchema:
    raw = as_mapping(key, raw)
    connection = [k for k in raw if k in CONNECTION_KEYS]
    if connection:
        raise ConfigError(f"{key}.{connection[0]}: connection settings belong in the influxdb: "
                          f"section, not in {key}")
    _no_unknown(key, raw, STATE_CHANGED_KEYS)
    defaults = StateChangedSchema()
    return StateChangedSchema(
        enabled=as_bool(f"{key}.enabled", raw.get("enabled", True)),
        include=_entity_filter(f"{key}.include", raw.get("include")),
        exclude=_entity_filter(f"{key}.exclude", raw.get("exclude")),
        measurement_attr=as_choice(f"{key}.measurement_attr",
                                   raw.get("measurement_attr", defaults.measurement_attr),
                                   MEASUREMENT_ATTRS),
        default_measurement=as_opt_str(f"{key}.default_measurement",
                                       raw.get("default_measurement")),
        override_measurement=as_opt_str(f"{key}.override_measurement",
                                        raw.get("override_measurement")),
        tags=_tag_pairs(f"{key}.tags", raw.get("tags")),
        tags_attributes=_tag_names(f"{key}.tags_attributes",
                                   as_str_list(f"{key}.tags_attributes",
                                               raw.get("tags_attributes"))),
        ignore_attributes=as_str_list(f"{key}.ignore_attributes", raw.get("ignore_attributes")),
        component_config=_overrides(f"{key}.component_config", raw.get("component_config"),
                                    entity_ids=True),
        component_config_domain=_overrides(f"{key}.component_config_domain",
                                           raw.get("component_config_domain")),
        component_config_glob=_overrides(f"{key}.component_config_glob",
                                         raw.get("component_config_glob")),
        datetime_attributes=as_str_list(f"{key}.datetime_attributes",
                                        raw.get("datetime_attributes",
                                                list(defaults.datetime_attributes))))


def _entity_filter(key: str, raw: Any) -> EntityFilter:
    raw = as_mapping(key, raw)
    _no_unknown(key, raw, ("domains", "entities", "entity_globs"))
    entities = as_str_list(f"{key}.entities", raw.get("entities"))
    for i, entity_id in enumerate(entities):
        _check_entity_id(f"{key}.entities[{i}]", entity_id)
    return EntityFilter(domains=as_str_list(f"{key}.domains", raw.get("domains")),
                        entities=tuple(e.lower() for e in entities),
                        entity_globs=as_str_list(f"{key}.entity_globs", raw.get("entity_globs")))


def _check_entity_id(key: str, value: str) -> None:
    if not _ENTITY_ID.match(value.lower()):
        raise fail(key, "an entity id such as sensor.kitchen_temperature", value)


def _str_pairs(key: str, raw: Any) -> tuple[tuple[str, str], ...]:
    raw = as_mapping(key, raw)
    return tuple((as_str(f"{key} (a key)", k), as_str(f"{key}.{k}", v, allow_empty=True))
                 for k, v in raw.items())


def _tag_pairs(key: str, raw: Any) -> tuple[tuple[str, str], ...]:
    pairs = _str_pairs(key, raw)
    _tag_names(key, tuple(name for name, _ in pairs))
    return pairs


def _overrides(key: str, raw: Any, entity_ids: bool = False
               ) -> tuple[tuple[str, EntityOverride], ...]:
    raw = as_mapping(key, raw)
    result = []
    for name, value in raw.items():
        name = as_str(f"{key} (a key)", name)
        if entity_ids:
            _check_entity_id(f"{key}.{name}", name)
            name = name.lower()
        sub = f"{key}.{name}"
        value = as_mapping(sub, value)
        _no_unknown(sub, value, ("override_measurement", "ignore_attributes"))
        measurement, ignore = value.get("override_measurement"), value.get("ignore_attributes")
        result.append((name, EntityOverride(
            override_measurement=None if measurement is None else as_str(
                f"{sub}.override_measurement", measurement, allow_empty=True),
            ignore_attributes=None if ignore is None else as_str_list(
                f"{sub}.ignore_attributes", ignore))))
    return tuple(result)


# ---- other HA events ----------------------------------------------------------------------------

def _events(key: str, raw: Any) -> EventsSchema:
    raw = as_mapping(key, raw)
    _no_unknown(key, raw, ("enabled", "measurement", "include", "exclude", "secret_keys"))
    return EventsSchema(enabled=as_bool(f"{key}.enabled", raw.get("enabled", True)),
                        measurement=as_str(f"{key}.measurement",
                                           raw.get("measurement", "ha_events")),
                        include=as_str_list(f"{key}.include", raw.get("include")),
                        exclude=as_str_list(f"{key}.exclude", raw.get("exclude")),
                        secret_keys=as_str_list(f"{key}.secret_keys",
                                                raw.get("secret_keys", list(SECRET_KEYS))))


# ---- MQTT ---------------------------------------------------------------------------------------

_MQTT_KEYS = ("enabled", "presets", "rules", "measurement", "format", "topic_tag", "retain_tag",
              "bools", "separator")
_RULE_KEYS = ("topic", "measurement", "tags", "format", "field", "match", "skip")


def _mqtt(key: str, raw: Any) -> MqttSchema:
    raw = as_mapping(key, raw)
    _no_unknown(key, raw, _MQTT_KEYS)
    rules = raw.get("rules") or []
    if not isinstance(rules, list):
        raise fail(f"{key}.rules", "a list of rules", rules)
    presets = raw.get("presets") or []
    if isinstance(presets, str):
        presets = [presets]
    if not isinstance(presets, list):
        raise fail(f"{key}.presets", "a list of preset names", presets)
    return MqttSchema(
        enabled=as_bool(f"{key}.enabled", raw.get("enabled", True)),
        presets=tuple(_preset(f"{key}.presets[{i}]", p) for i, p in enumerate(presets)),
        rules=tuple(_rule(f"{key}.rules[{i}]", r) for i, r in enumerate(rules)),
        measurement=as_str(f"{key}.measurement", raw.get("measurement", "mqtt")),
        format=as_choice(f"{key}.format", raw.get("format", "auto"), MQTT_FORMATS),
        topic_tag=_opt_tag_name(f"{key}.topic_tag", raw.get("topic_tag", "topic")),
        retain_tag=_opt_tag_name(f"{key}.retain_tag", raw.get("retain_tag", "retained")),
        bools=as_choice(f"{key}.bools", raw.get("bools", "float"), MQTT_BOOLS),
        separator=as_str(f"{key}.separator", raw.get("separator", "_")))


def _opt_tag_name(key: str, raw: Any) -> str | None:
    name = as_opt_str(key, raw)
    if name is not None:
        _tag_names(key, (name,))
    return name


def _preset(key: str, raw: Any) -> MqttPreset:
    if isinstance(raw, dict):
        _no_unknown(key, raw, ("name", "prefix"))
        name = as_choice(f"{key}.name", raw.get("name"), MQTT_PRESETS)
        prefix = as_opt_str(f"{key}.prefix", raw.get("prefix"))
        if prefix is not None:
            _check_prefix(f"{key}.prefix", prefix)
        return MqttPreset(name, prefix)
    return MqttPreset(as_choice(key, raw, MQTT_PRESETS))


def _check_prefix(key: str, prefix: str) -> None:
    if any(ch in prefix for ch in "+#") or prefix.startswith("/") or prefix.endswith("/"):
        raise fail(key, "a topic prefix without wildcards or leading/trailing '/'", prefix)


def _rule(key: str, raw: Any) -> MqttRule:
    raw = as_mapping(key, raw)
    _no_unknown(key, raw, _RULE_KEYS)
    if "topic" not in raw:
        raise ConfigError(f"{key}.topic is required")
    topic = as_str(f"{key}.topic", raw["topic"])
    names = topic_names(f"{key}.topic", topic)
    rule = MqttRule(
        topic=topic,
        measurement=as_opt_str(f"{key}.measurement", raw.get("measurement")),
        tags=_tag_pairs(f"{key}.tags", raw.get("tags")),
        format=(as_choice(f"{key}.format", raw["format"], MQTT_FORMATS)
                if raw.get("format") is not None else None),
        field=as_str(f"{key}.field", raw.get("field", "value")),
        match=_match(f"{key}.match", raw.get("match"), names),
        skip=as_bool(f"{key}.skip", raw.get("skip", False)))
    _check_templates(key, rule, names)
    return rule


def topic_names(key: str, topic: str) -> tuple[str, ...]:
    """Names bound by ``+name``/``#name`` levels; checks the filter against MQTT's rules."""
    try:
        return topicfilter.validate(topic, named=True)
    except topicfilter.FilterError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _match(key: str, raw: Any, names: tuple[str, ...]
           ) -> tuple[tuple[str, tuple[str, ...]], ...]:
    raw = as_mapping(key, raw)
    result = []
    for name, values in raw.items():
        if name not in names:
            raise ConfigError(f"{key}.{name}: the topic has no segment named {name!r}")
        result.append((name, as_str_list(f"{key}.{name}", values)))
    return tuple(result)


def _check_templates(key: str, rule: MqttRule, names: tuple[str, ...]) -> None:
    templates = [("measurement", rule.measurement), ("field", rule.field)]
    templates += [(f"tags.{k}", v) for k, v in rule.tags]
    for where, template in templates:
        for ref in _TEMPLATE_REF.findall(template or ""):
            if ref != "topic" and ref not in names:
                raise ConfigError(f"{key}.{where}: {{{ref}}} is not a named segment of the "
                                  f"topic {rule.topic!r} (named: {', '.join(names) or 'none'})")


def glob_to_regex(pattern: str) -> str:
    """HA's entity globs are fnmatch patterns."""
    return fnmatch.translate(pattern)
