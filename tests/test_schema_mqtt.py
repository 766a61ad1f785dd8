"""MQTT messages → points: default, topic rules, payload formats, presets; real mqtt_statestream
messages captured from HA 2024.3.3."""

from __future__ import annotations

from pathlib import Path

import pytest

from ha_ingestor.config.schema import build_schema
from ha_ingestor.envelope import mqtt_event
from writer.convert import ConversionError, Converter

RX = 1795795068942943000

# Live messages from HA 2024.3.3's mqtt_statestream (topic, payload), as captured.
STATESTREAM = [
    ("homeassistant_statestream/input_boolean/acc_switch_1/state", "on"),
    ("homeassistant_statestream/input_boolean/acc_switch_1/last_updated",
     "2026-11-27T15:57:48.942943+00:00"),
    ("homeassistant_statestream/input_number/acc_temp_1/state", "21.3"),
    ("homeassistant_statestream/counter/acc_counter/state", "1"),
    ("homeassistant_statestream/input_text/acc_note/state", "capture 1795795068"),
]


def convert(topic: str, payload: str | bytes, mqtt: dict | None = None, retain: bool = False):
    data = payload.encode() if isinstance(payload, str) else payload
    return Converter(build_schema({"mqtt": mqtt or {}})).convert(
        mqtt_event(topic, data, 1, retain, RX))


def test_default_measurement_topic_tag_retained_tag_and_receive_time():
    assert convert("home/kitchen/temp", "21.5") == (
        f"mqtt,retained=false,topic=home/kitchen/temp value=21.5 {RX}")
    assert convert("home/door", "open", retain=True) == (
        f'mqtt,retained=true,topic=home/door value_str="open" {RX}')


def test_auto_format_flattens_json_with_stable_types():
    got = convert("dev/x", '{"t": 21, "name": "x", "ok": true, "n": null, "deep": {"a": 1},'
                           ' "list": [1, 2]}')
    assert got == (f'mqtt,retained=false,topic=dev/x deep_a=1.0,list_str="[1,2]",name_str="x",'
                   f"ok=1.0,t=21.0 {RX}")


def test_value_format_keeps_json_text_and_json_format_rejects_text():
    rules = [{"topic": "raw/#", "format": "value"}, {"topic": "strict/#", "format": "json"}]
    assert convert("raw/a", '{"a": 1}', {"rules": rules}).endswith(
        f'value_str="{{\\"a\\": 1}}" {RX}')
    with pytest.raises(ConversionError, match="not JSON"):
        convert("strict/a", "hello", {"rules": rules})


def test_nan_and_inf_payloads_are_text_not_numbers():
    assert 'value_str="nan"' in convert("a/b", "nan")
    assert 'value_str="inf"' in convert("a/b", "inf")


def test_booleans_as_strings_when_configured():
    assert 'ok_str="true"' in convert("a/b", '{"ok": true}', {"bools": "string"})


def test_rule_with_named_segments_builds_measurement_tags_and_field():
    mqtt = {"rules": [{"topic": "sensors/+room/+quantity", "measurement": "{quantity}",
                       "tags": {"room": "{room}"}, "field": "reading"}],
            "topic_tag": None, "retain_tag": None}
    assert convert("sensors/kitchen/temperature", "20.5", mqtt) == (
        f"temperature,room=kitchen reading=20.5 {RX}")
    assert convert("other/x", "1", mqtt) == f"mqtt value=1.0 {RX}"


def test_rule_match_and_skip():
    mqtt = {"rules": [{"topic": "+dev/+kind", "match": {"kind": ["set", "get"]}, "skip": True},
                      {"topic": "#rest", "measurement": "all"}]}
    assert convert("lamp/set", '{"state": "ON"}', mqtt) is None
    assert convert("lamp/state", "ON", mqtt).startswith("all,")


def test_binary_payload_is_a_conversion_error():
    with pytest.raises(ConversionError, match="not UTF-8"):
        convert("cam/snapshot", b"\xff\xd8\xff\xe0")


def test_a_payload_with_nothing_to_write_is_a_dead_letter_not_a_silent_drop():
    strict = {"rules": [{"topic": "strict/#", "format": "json"}]}
    for topic, payload in (("a/b", "{}"), ("a/b", '{"a": null, "b": {}}'), ("strict/x", "null")):
        with pytest.raises(ConversionError, match="nothing to write") as caught:
            convert(topic, payload, strict)
        assert caught.value.kind == "empty"
    assert convert("a/b", "null").endswith(f'value_str="null" {RX}')   # auto: not JSON-shaped


def test_preset_mqtt_statestream_on_real_messages():
    mqtt = {"presets": ["mqtt_statestream"]}
    got = [convert(t, p, mqtt, retain=True) for t, p in STATESTREAM]
    assert got[0] == ("mqtt_statestream,domain=input_boolean,entity_id=acc_switch_1,"
                      "retained=true,topic=homeassistant_statestream/input_boolean/acc_switch_1/"
                      f'state state_str="on" {RX}')
    assert got[1].endswith(f'last_updated_str="2026-11-27T15:57:48.942943+00:00" {RX}')
    assert got[2].endswith(f"state=21.3 {RX}") and got[3].endswith(f"state=1.0 {RX}")
    assert got[4].endswith(f'state_str="capture 1795795068" {RX}')
    quoted = convert("homeassistant_statestream/input_number/acc_temp_1/friendly_name",
                     '"Acc temperature 1"', mqtt)
    assert quoted.endswith(f'friendly_name_str="Acc temperature 1" {RX}')


@pytest.mark.parametrize("folder", ["", "2025.4.4"], ids=["ha2024.3.3", "ha2025.4.4"])
def test_preset_mqtt_statestream_on_every_captured_message(folder):
    """Every live statestream message captured from each tested HA release becomes a point of
    the preset: the state, the timestamps and each attribute as a field of its entity."""
    path = Path(__file__).parent / "data" / "ha-samples" / folder / "mqtt_statestream.txt"
    mqtt = {"presets": ["mqtt_statestream"]}
    for line in path.read_text().splitlines():
        topic, payload = line.split("\t", 1)
        _base, domain, object_id, key = topic.split("/")
        point = convert(topic, payload, mqtt)
        assert point.startswith(f"mqtt_statestream,domain={domain},entity_id={object_id},"), line
        assert f" {key}=" in point or f" {key}_str=" in point, (line, point)


def test_preset_zigbee2mqtt():
    mqtt = {"presets": ["zigbee2mqtt"]}
    got = convert("zigbee2mqtt/kitchen_sensor",
                  '{"temperature": 21.4, "humidity": 48, "battery": 97, "linkquality": 120,'
                  ' "state": "ON", "update": {"state": "idle"}}', mqtt)
    assert got == ("zigbee2mqtt,device=kitchen_sensor,retained=false,"
                   "topic=zigbee2mqtt/kitchen_sensor battery=97.0,humidity=48.0,"
                   f'linkquality=120.0,state_str="ON",temperature=21.4,update_state_str="idle" {RX}')
    assert convert("zigbee2mqtt/kitchen_sensor/availability", '{"state": "online"}', mqtt
                   ).startswith("zigbee2mqtt_availability,device=kitchen_sensor,")
    assert convert("zigbee2mqtt/bridge/state", "online", mqtt).startswith("mqtt,")
    custom = {"presets": [{"name": "zigbee2mqtt", "prefix": "z2m"}]}
    assert convert("z2m/plug", '{"power": 5}', custom).startswith("zigbee2mqtt,device=plug,")


def test_preset_tasmota():
    mqtt = {"presets": ["tasmota"]}
    assert convert("tele/plug1/SENSOR", '{"Time": "2024-03-01T10:00:00",'
                   ' "ENERGY": {"Power": 12.5, "Today": 0.4}}', mqtt) == (
        "tasmota,device=plug1,message=SENSOR,retained=false,topic=tele/plug1/SENSOR "
        f'ENERGY_Power=12.5,ENERGY_Today=0.4,Time_str="2024-03-01T10:00:00" {RX}')
    assert convert("stat/plug1/POWER", "ON", mqtt).endswith(f'POWER_str="ON" {RX}')
    assert convert("tele/plug1/LWT", "Online", mqtt).endswith(f'LWT_str="Online" {RX}')
    assert convert("cmnd/plug1/POWER", "TOGGLE", mqtt).startswith("mqtt,")


def test_preset_esphome():
    mqtt = {"presets": ["esphome"]}
    assert convert("livingroom/sensor/temperature/state", "22.1", mqtt) == (
        "esphome,component=sensor,device=livingroom,object_id=temperature,retained=false,"
        f"topic=livingroom/sensor/temperature/state value=22.1 {RX}")
    assert convert("livingroom/binary_sensor/motion/state", "OFF", mqtt).endswith(
        f'value_str="OFF" {RX}')
    assert convert("livingroom/bogus/motion/state", "1", mqtt).startswith("mqtt,")
    named = {"presets": [{"name": "esphome", "prefix": "garage"}]}
    assert convert("garage/status", "online", named).startswith("esphome_status,device=garage,")


def test_user_rules_come_before_presets():
    mqtt = {"presets": ["zigbee2mqtt"],
            "rules": [{"topic": "zigbee2mqtt/+device", "measurement": "mine",
                       "tags": {"d": "{device}"}}]}
    assert convert("zigbee2mqtt/x", '{"a": 1}', mqtt).startswith("mine,d=x,")


def test_replay_gives_the_identical_line():
    event = mqtt_event("zigbee2mqtt/x", b'{"a": 1}', 1, False, RX)
    conv = Converter(build_schema({"mqtt": {"presets": ["zigbee2mqtt"]}}))
    assert conv.convert(event) == conv.convert(dict(event))
