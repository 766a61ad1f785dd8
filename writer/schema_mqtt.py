"""MQTT messages → points: topic rules (like Telegraf's topic parsing), payload formats, presets.

A rule's ``topic`` is an MQTT filter whose wildcards may be named: ``tele/+device/+kind``,
``sensors/#rest``. The first rule that matches (user rules first, then presets in the order
listed) gives the measurement, tags and field name, all templates over the named segments and
``{topic}``. Topics no rule matches go to measurement ``mqtt`` with the payload in ``value``.

Payload formats: ``json`` (objects flattened; numbers float fields, strings ``_str``, booleans
1.0/0.0 or ``_str`` by ``bools``), ``value`` (a number → float ``<field>``, anything else
``<field>_str``) and ``auto`` (json for objects, arrays and quoted strings, value otherwise). Every point also
gets the ``topic`` tag and the ``retained`` tag (names configurable, null to leave out).
Time: the collector's receive time, so re-sending a queued message rewrites the same point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ha_ingestor.config.schema import MQTT_PRESETS, MqttPreset, MqttRule, MqttSchema
from ha_ingestor.envelope import mqtt_payload
from ha_ingestor.errors import ConversionError
from ha_ingestor.memo import Memo
from ha_ingestor.topicfilter import Pattern
from writer.fields import Flattener, Limits, flatten_json, parse_json, parse_number
from writer.lineprotocol import make_line
from writer.names import stored_key

ESPHOME_COMPONENTS = ("sensor", "binary_sensor", "switch", "light", "fan", "cover", "climate",
                      "text_sensor", "number", "select", "button", "lock", "valve", "text",
                      "datetime", "event", "alarm_control_panel", "media_player", "siren")
_MAX_CACHED_TOPICS = 65536
_JSON_SPACE = " \t\r\n"


def preset_rules(preset: MqttPreset) -> tuple[MqttRule, ...]:
    """The rules a preset stands for."""
    name, prefix = preset.name, preset.prefix
    if name == "zigbee2mqtt":
        p = prefix or "zigbee2mqtt"
        return (MqttRule(topic=f"{p}/+device/availability", measurement="zigbee2mqtt_availability",
                         tags=(("device", "{device}"),), format="auto", field="availability"),
                MqttRule(topic=f"{p}/+device", measurement="zigbee2mqtt",
                         tags=(("device", "{device}"),), format="auto"))
    if name == "tasmota":
        p = f"{prefix}/" if prefix else ""
        return tuple(MqttRule(topic=f"{p}{kind}/+device/+message", measurement="tasmota",
                              tags=(("device", "{device}"), ("message", "{message}")),
                              format="auto", field="{message}")
                     for kind in ("tele", "stat"))
    if name == "esphome":
        rules = []
        if prefix:
            rules.append(MqttRule(topic=f"{prefix}/+component/+object_id/state",
                                  measurement="esphome",
                                  tags=(("device", prefix), ("component", "{component}"),
                                        ("object_id", "{object_id}")), format="auto"))
            rules.append(MqttRule(topic=f"{prefix}/status", measurement="esphome_status",
                                  tags=(("device", prefix),), format="value", field="status"))
        else:
            rules.append(MqttRule(topic="+device/+component/+object_id/state",
                                  measurement="esphome",
                                  tags=(("device", "{device}"), ("component", "{component}"),
                                        ("object_id", "{object_id}")), format="auto",
                                  match=(("component", ESPHOME_COMPONENTS),)))
        return tuple(rules)
    if name == "mqtt_statestream":
        p = prefix or "homeassistant_statestream"
        return (MqttRule(topic=f"{p}/+domain/+object_id/+attribute",
                         measurement="mqtt_statestream",
                         tags=(("domain", "{domain}"), ("entity_id", "{object_id}")),
                         format="auto", field="{attribute}"),)
    raise ValueError(f"unknown preset {name!r} (known: {', '.join(MQTT_PRESETS)})")


@dataclass(frozen=True)
class _Compiled:
    rule: MqttRule
    pattern: Pattern
    match: dict

    def bind(self, levels: list[str]) -> dict[str, str] | None:
        """Named segment values when ``levels`` matches this rule's filter, else None."""
        names = self.pattern.bind(levels)
        return None if names is None else self._allowed(names)

    def _allowed(self, names: dict[str, str]) -> dict[str, str] | None:
        for name, values in self.match.items():
            if names.get(name) not in values:
                return None
        return names


@dataclass(frozen=True)
class _Target:
    """What a topic resolves to (cached per topic)."""

    skip: bool
    measurement: str
    tags: dict
    field: str
    format: str


class MqttSchemaConverter:
    def __init__(self, config: MqttSchema, limits: Limits = Limits()):
        self.config = config
        rules = list(config.rules)
        for preset in config.presets:
            rules.extend(preset_rules(preset))
        self.rules = [_Compiled(r, Pattern.compile(r.topic, named=True), dict(r.match))
                      for r in rules]
        self.flattener = Flattener(limits, config.separator, config.bools == "float")
        self._targets = Memo(self._resolve, _MAX_CACHED_TOPICS)

    def to_line(self, event: dict[str, Any]) -> str | None:
        """The point for one MQTT envelope, or None when a rule skips its topic. Raises
        ConversionError when the message cannot become a point (binary payload, nothing to
        write, a name InfluxDB cannot store, a limit)."""
        if not self.config.enabled:
            return None
        topic = event["topic"]
        target = self._targets[topic]
        if target.skip:
            return None
        if event.get("pe") == "b64":
            raise ConversionError(f"payload of {len(mqtt_payload(event))} bytes on {topic!r} is "
                                  "not UTF-8 text; no payload format converts binary data",
                                  "binary")
        fields = self._fields(event["p"], target)
        if not fields:
            raise ConversionError(f"nothing to write: the payload on {topic!r} holds no value "
                                  "(an empty JSON object, or only nulls)", "empty")
        tags = target.tags
        if self.config.retain_tag:
            tags = {**tags, self.config.retain_tag: "true" if event.get("retain") else "false"}
        return make_line(target.measurement, tags, fields, int(event["rx"]))

    def _resolve(self, topic: str) -> _Target:
        levels = topic.split("/")
        config = self.config
        for compiled in self.rules:
            names = compiled.bind(levels)
            if names is None:
                continue
            rule = compiled.rule
            names["topic"] = topic
            tags = {k: v.format_map(names) for k, v in rule.tags}
            if config.topic_tag:
                tags.setdefault(config.topic_tag, topic)
            return _Target(rule.skip, (rule.measurement or config.measurement).format_map(names),
                           tags, rule.field.format_map(names), rule.format or config.format)
        tags = {config.topic_tag: topic} if config.topic_tag else {}
        return _Target(False, config.measurement, tags, "value", config.format)

    def _fields(self, text: str, target: _Target) -> dict[str, float | str]:
        kind = target.format
        if kind == "auto":
            if text.lstrip(_JSON_SPACE)[:1] in ("{", "[", '"'):
                try:
                    return self._json(text, target.field)
                except ValueError as exc:
                    if isinstance(exc, ConversionError):
                        raise
            return self._value(text, target.field)
        if kind == "json":
            try:
                return self._json(text, target.field)
            except ConversionError:
                raise
            except ValueError as exc:
                raise ConversionError(f"payload is not JSON ({exc}): {text[:80]!r}",
                                      "not_json") from None
        return self._value(text, target.field)

    def _json(self, text: str, field: str) -> dict[str, float | str]:
        """Raises ValueError when ``text`` is not JSON."""
        data = parse_json(text)
        if type(data) is str:                 # a JSON string: its text, as a single value
            return self._value(data, field)
        fields, _ = flatten_json(text, data, self.flattener,
                                 None if type(data) is dict else field)
        return fields

    def _value(self, text: str, field: str) -> dict[str, float | str]:
        number = parse_number(text)
        if number is None:
            fields, _ = self.flattener.fields(text, field)
            return fields
        return {stored_key[field]: number}
