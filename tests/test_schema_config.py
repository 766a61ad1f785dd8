"""The ``schema:`` config section: defaults, HA-style options, and errors that name the key."""

from __future__ import annotations

import pytest

from ha_ingestor.config.schema import SchemaConfig, build_schema
from ha_ingestor.errors import ConfigError


def test_empty_section_gives_has_defaults():
    schema = build_schema(None)
    assert schema == SchemaConfig()
    assert schema.state_changed.measurement_attr == "unit_of_measurement"
    assert schema.events.measurement == "ha_events"
    assert schema.mqtt.measurement == "mqtt" and schema.mqtt.topic_tag == "topic"


def test_ha_influxdb_options_are_accepted_as_ha_writes_them():
    schema = build_schema({"state_changed": {
        "include": {"domains": "sensor", "entity_globs": ["binary_sensor.*"]},
        "exclude": {"entities": ["Sensor.Noisy"]},
        "tags": {"instance": "prod"}, "tags_attributes": "friendly_name",
        "component_config": {"sensor.x": {"override_measurement": "x"}},
        "component_config_glob": {"sensor.*_temp": {"ignore_attributes": "icon"}}}})
    sc = schema.state_changed
    assert sc.include.domains == ("sensor",) and sc.exclude.entities == ("sensor.noisy",)
    assert sc.tags == (("instance", "prod"),) and sc.tags_attributes == ("friendly_name",)
    assert sc.component_config_glob[0][1].ignore_attributes == ("icon",)


@pytest.mark.parametrize("raw, message", [
    ({"state_changed": {"measurement_attr": "unit"}},
     "schema.state_changed.measurement_attr must be unit_of_measurement, "
     "domain__device_class or entity_id, got 'unit'"),
    ({"state_changed": {"host": "influx"}},
     "schema.state_changed.host: connection settings belong in the influxdb: section"),
    ({"state_changed": {"include": {"entities": ["not an id"]}}},
     "schema.state_changed.include.entities[0] must be an entity id"),
    ({"state_changed": {"component_config": {"sensor.x": {"override": "y"}}}},
     "schema.state_changed.component_config.sensor.x.override: unknown key"),
    ({"events": {"measurment": "x"}}, "schema.events.measurment: unknown key"),
    ({"mqtt": {"presets": ["zigbee"]}},
     "schema.mqtt.presets[0] must be zigbee2mqtt, tasmota, esphome or mqtt_statestream, "
     "got 'zigbee'"),
    ({"mqtt": {"format": "xml"}}, "schema.mqtt.format must be json, value or auto, got 'xml'"),
    ({"mqtt": {"rules": [{"measurement": "x"}]}}, "schema.mqtt.rules[0].topic is required"),
    ({"mqtt": {"rules": [{"topic": "a/#/b"}]}},
     "schema.mqtt.rules[0].topic: '#' must be the last level: 'a/#/b'"),
    ({"mqtt": {"rules": [{"topic": "a/+dev", "tags": {"room": "{room}"}}]}},
     "schema.mqtt.rules[0].tags.room: {room} is not a named segment of the topic 'a/+dev'"),
    ({"mqtt": {"rules": [{"topic": "a/+dev", "match": {"kind": ["x"]}}]}},
     "schema.mqtt.rules[0].match.kind: the topic has no segment named 'kind'"),
    ({"colour": 1}, "schema.colour: unknown key"),
    ("yes", "schema must be a mapping, got 'yes'"),
])
def test_errors_name_the_dotted_key_and_the_value(raw, message):
    with pytest.raises(ConfigError) as info:
        build_schema(raw)
    assert message in str(info.value)


def test_config_objects_are_frozen():
    schema = build_schema({})
    with pytest.raises(AttributeError):
        schema.mqtt.measurement = "x"
