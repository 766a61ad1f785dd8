"""HA event types other than state_changed → ``ha_events`` points, on real frames from HA 2024.3.3."""

from __future__ import annotations

from ha_ingestor.config.schema import build_schema
from ha_ingestor.envelope import ha_event
from tests.test_schema_ha import SAMPLE_EVENTS
from writer.convert import Converter


def convert(name: str, events: dict | None = None) -> str | None:
    conv = Converter(build_schema({"events": events or {}}))
    return conv.convert(ha_event(SAMPLE_EVENTS[name]))


def test_call_service_has_domain_service_and_entity_tags():
    assert convert("call_service") == (
        "ha_events,domain=input_boolean,entity_id=input_boolean.acc_switch_1,"
        "event_type=call_service,service=toggle "
        'context_id_str="01M8EVMA0EXB8CHPAT4AMMQ9XB",'
        'context_user_id_str="f1eb3867fb304403a156ead7a37b6a78",fired=1.0,'
        'service_data_entity_id_str="[\\"input_boolean.acc_switch_1\\"]" 1795795068942151000')


def test_automation_triggered_keeps_its_data_as_string_fields():
    assert convert("automation_triggered") == (
        "ha_events,entity_id=automation.acc_switch_1_counts,event_type=automation_triggered "
        'context_id_str="01M8EVMA0F9TSHEDN89JV3P52C",'
        'context_parent_id_str="01M8EVMA0EXB8CHPAT4AMMQ9XB",fired=1.0,'
        'name_str="Acc switch 1 counts",source_str="state of input_boolean.acc_switch_1" '
        "1795795068944094000")


def test_measurement_and_event_type_selection_are_configurable():
    assert convert("call_service", {"measurement": "events"}).startswith("events,")
    assert convert("call_service", {"include": ["automation_triggered"]}) is None
    assert convert("automation_triggered", {"include": ["automation_triggered"]})
    assert convert("call_service", {"exclude": ["call_service"]}) is None
    assert convert("call_service", {"enabled": False}) is None


def test_event_without_data_still_has_a_field():
    event = {"event_type": "homeassistant_started", "data": {}, "origin": "LOCAL",
             "time_fired": "2026-11-27T15:57:40.000001+00:00", "context": None}
    assert Converter(build_schema({})).convert(ha_event(event)) == (
        "ha_events,event_type=homeassistant_started fired=1.0 1795795060000001000")


def test_state_changed_options_do_not_touch_other_events():
    conv = Converter(build_schema({"state_changed": {"enabled": False}}))
    assert conv.convert(ha_event(SAMPLE_EVENTS["state_changed_counter"])) is None
    assert conv.convert(ha_event(SAMPLE_EVENTS["call_service"])) is not None
