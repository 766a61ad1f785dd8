"""state_changed → the point HA's own influxdb integration writes, on real frames captured from
Home Assistant 2024.3.3, and every option of ``schema.state_changed``.

The expected lines here were checked against HA's own code by tests/test_schema_ha_parity.py.
"""

from __future__ import annotations

import copy
import json

import pytest

from ha_ingestor.config.schema import build_schema
from ha_ingestor.envelope import ha_event, state_as_event
from writer.convert import ConversionError, Converter
from writer.schema_ha import StateChangedSchemaHA

# The ``event`` object of real frames from HA 2024.3.3: input_number with a unit, the template
# sensor with a device class, input_boolean, counter, input_text, input_select, the automation
# (attribute-only change), and a call_service and an automation_triggered event.
SAMPLE_EVENTS = json.loads(r"""
{
 "automation_triggered": {
  "event_type": "automation_triggered",
  "data": {
   "name": "Acc switch 1 counts",
   "entity_id": "automation.acc_switch_1_counts",
   "source": "state of input_boolean.acc_switch_1"
  },
  "origin": "LOCAL",
  "time_fired": "2026-11-27T15:57:48.944094+00:00",
  "context": {
   "id": "01M8EVMA0F9TSHEDN89JV3P52C",
   "parent_id": "01M8EVMA0EXB8CHPAT4AMMQ9XB",
   "user_id": null
  }
 },
 "call_service": {
  "event_type": "call_service",
  "data": {
   "domain": "input_boolean",
   "service": "toggle",
   "service_data": {
    "entity_id": [
     "input_boolean.acc_switch_1"
    ]
   }
  },
  "origin": "LOCAL",
  "time_fired": "2026-11-27T15:57:48.942151+00:00",
  "context": {
   "id": "01M8EVMA0EXB8CHPAT4AMMQ9XB",
   "parent_id": null,
   "user_id": "f1eb3867fb304403a156ead7a37b6a78"
  }
 },
 "state_changed_automation": {
  "event_type": "state_changed",
  "data": {
   "entity_id": "automation.acc_switch_1_counts",
   "old_state": {
    "entity_id": "automation.acc_switch_1_counts",
    "state": "on",
    "attributes": {
     "id": "acc_switch_1_counts",
     "last_triggered": null,
     "mode": "queued",
     "current": 0,
     "max": 1000,
     "friendly_name": "Acc switch 1 counts"
    },
    "last_changed": "2026-11-27T15:57:42.749332+00:00",
    "last_updated": "2026-11-27T15:57:42.749332+00:00",
    "context": {
     "id": "01M8EVM3YX6JW5JJYVW5AG0DDS",
     "parent_id": null,
     "user_id": null
    }
   },
   "new_state": {
    "entity_id": "automation.acc_switch_1_counts",
    "state": "on",
    "attributes": {
     "id": "acc_switch_1_counts",
     "last_triggered": "2026-11-27T15:57:48.944151+00:00",
     "mode": "queued",
     "current": 1,
     "max": 1000,
     "friendly_name": "Acc switch 1 counts"
    },
    "last_changed": "2026-11-27T15:57:42.749332+00:00",
    "last_updated": "2026-11-27T15:57:48.944405+00:00",
    "context": {
     "id": "01M8EVMA0F9TSHEDN89JV3P52C",
     "parent_id": "01M8EVMA0EXB8CHPAT4AMMQ9XB",
     "user_id": null
    }
   }
  },
  "origin": "LOCAL",
  "time_fired": "2026-11-27T15:57:48.944405+00:00",
  "context": {
   "id": "01M8EVMA0F9TSHEDN89JV3P52C",
   "parent_id": "01M8EVMA0EXB8CHPAT4AMMQ9XB",
   "user_id": null
  }
 },
 "state_changed_counter": {
  "event_type": "state_changed",
  "data": {
   "entity_id": "counter.acc_counter",
   "old_state": {
    "entity_id": "counter.acc_counter",
    "state": "0",
    "attributes": {
     "editable": false,
     "initial": 0,
     "step": 1,
     "friendly_name": "Acc counter"
    },
    "last_changed": "2026-11-27T15:57:42.726539+00:00",
    "last_updated": "2026-11-27T15:57:42.726539+00:00",
    "context": {
     "id": "01M8EVM3Y6KN9CSJ3AEC3EMV0A",
     "parent_id": null,
     "user_id": null
    }
   },
   "new_state": {
    "entity_id": "counter.acc_counter",
    "state": "1",
    "attributes": {
     "editable": false,
     "initial": 0,
     "step": 1,
     "friendly_name": "Acc counter"
    },
    "last_changed": "2026-11-27T15:57:48.949713+00:00",
    "last_updated": "2026-11-27T15:57:48.949713+00:00",
    "context": {
     "id": "01M8EVMA0F9TSHEDN89JV3P52C",
     "parent_id": "01M8EVMA0EXB8CHPAT4AMMQ9XB",
     "user_id": null
    }
   }
  },
  "origin": "LOCAL",
  "time_fired": "2026-11-27T15:57:48.949713+00:00",
  "context": {
   "id": "01M8EVMA0F9TSHEDN89JV3P52C",
   "parent_id": "01M8EVMA0EXB8CHPAT4AMMQ9XB",
   "user_id": null
  }
 },
 "state_changed_input_boolean": {
  "event_type": "state_changed",
  "data": {
   "entity_id": "input_boolean.acc_switch_1",
   "old_state": {
    "entity_id": "input_boolean.acc_switch_1",
    "state": "off",
    "attributes": {
     "editable": false,
     "friendly_name": "Acc switch 1"
    },
    "last_changed": "2026-11-27T15:57:42.726780+00:00",
    "last_updated": "2026-11-27T15:57:42.726780+00:00",
    "context": {
     "id": "01M8EVM3Y6KDEW18YD3E0BNP0Y",
     "parent_id": null,
     "user_id": null
    }
   },
   "new_state": {
    "entity_id": "input_boolean.acc_switch_1",
    "state": "on",
    "attributes": {
     "editable": false,
     "friendly_name": "Acc switch 1"
    },
    "last_changed": "2026-11-27T15:57:48.942943+00:00",
    "last_updated": "2026-11-27T15:57:48.942943+00:00",
    "context": {
     "id": "01M8EVMA0EXB8CHPAT4AMMQ9XB",
     "parent_id": null,
     "user_id": "f1eb3867fb304403a156ead7a37b6a78"
    }
   }
  },
  "origin": "LOCAL",
  "time_fired": "2026-11-27T15:57:48.942943+00:00",
  "context": {
   "id": "01M8EVMA0EXB8CHPAT4AMMQ9XB",
   "parent_id": null,
   "user_id": "f1eb3867fb304403a156ead7a37b6a78"
  }
 },
 "state_changed_input_number": {
  "event_type": "state_changed",
  "data": {
   "entity_id": "input_number.acc_temp_1",
   "old_state": {
    "entity_id": "input_number.acc_temp_1",
    "state": "-20.0",
    "attributes": {
     "initial": null,
     "editable": false,
     "min": -20.0,
     "max": 50.0,
     "step": 0.1,
     "mode": "box",
     "unit_of_measurement": "°C",
     "friendly_name": "Acc temperature 1"
    },
    "last_changed": "2026-11-27T15:57:42.723826+00:00",
    "last_updated": "2026-11-27T15:57:42.723826+00:00",
    "context": {
     "id": "01M8EVM3Y359JY8033GQQ0F2ZS",
     "parent_id": null,
     "user_id": null
    }
   },
   "new_state": {
    "entity_id": "input_number.acc_temp_1",
    "state": "21.3",
    "attributes": {
     "initial": null,
     "editable": false,
     "min": -20.0,
     "max": 50.0,
     "step": 0.1,
     "mode": "box",
     "unit_of_measurement": "°C",
     "friendly_name": "Acc temperature 1"
    },
    "last_changed": "2026-11-27T15:57:48.948479+00:00",
    "last_updated": "2026-11-27T15:57:48.948479+00:00",
    "context": {
     "id": "01M8EVMA0KKWYAABQJ3ZNVVFNB",
     "parent_id": null,
     "user_id": "f1eb3867fb304403a156ead7a37b6a78"
    }
   }
  },
  "origin": "LOCAL",
  "time_fired": "2026-11-27T15:57:48.948479+00:00",
  "context": {
   "id": "01M8EVMA0KKWYAABQJ3ZNVVFNB",
   "parent_id": null,
   "user_id": "f1eb3867fb304403a156ead7a37b6a78"
  }
 },
 "state_changed_input_select": {
  "event_type": "state_changed",
  "data": {
   "entity_id": "input_select.acc_mode",
   "old_state": {
    "entity_id": "input_select.acc_mode",
    "state": "eco",
    "attributes": {
     "options": [
      "eco",
      "comfort",
      "away",
      "boost"
     ],
     "editable": false,
     "friendly_name": "Acc mode"
    },
    "last_changed": "2026-11-27T15:57:42.723632+00:00",
    "last_updated": "2026-11-27T15:57:42.723632+00:00",
    "context": {
     "id": "01M8EVM3Y3QWYZCC7YNMZWBKKA",
     "parent_id": null,
     "user_id": null
    }
   },
   "new_state": {
    "entity_id": "input_select.acc_mode",
    "state": "comfort",
    "attributes": {
     "options": [
      "eco",
      "comfort",
      "away",
      "boost"
     ],
     "editable": false,
     "friendly_name": "Acc mode"
    },
    "last_changed": "2026-11-27T15:57:48.957796+00:00",
    "last_updated": "2026-11-27T15:57:48.957796+00:00",
    "context": {
     "id": "01M8EVMA0W2AQ3JW22ATBHVR58",
     "parent_id": null,
     "user_id": "f1eb3867fb304403a156ead7a37b6a78"
    }
   }
  },
  "origin": "LOCAL",
  "time_fired": "2026-11-27T15:57:48.957796+00:00",
  "context": {
   "id": "01M8EVMA0W2AQ3JW22ATBHVR58",
   "parent_id": null,
   "user_id": "f1eb3867fb304403a156ead7a37b6a78"
  }
 },
 "state_changed_input_text": {
  "event_type": "state_changed",
  "data": {
   "entity_id": "input_text.acc_note",
   "old_state": {
    "entity_id": "input_text.acc_note",
    "state": "unknown",
    "attributes": {
     "editable": false,
     "min": 0,
     "max": 100,
     "pattern": null,
     "mode": "text",
     "friendly_name": "Acc note"
    },
    "last_changed": "2026-11-27T15:57:42.723214+00:00",
    "last_updated": "2026-11-27T15:57:42.723214+00:00",
    "context": {
     "id": "01M8EVM3Y36614GZ3M86V4YK86",
     "parent_id": null,
     "user_id": null
    }
   },
   "new_state": {
    "entity_id": "input_text.acc_note",
    "state": "capture 1795795068",
    "attributes": {
     "editable": false,
     "min": 0,
     "max": 100,
     "pattern": null,
     "mode": "text",
     "friendly_name": "Acc note"
    },
    "last_changed": "2026-11-27T15:57:48.954640+00:00",
    "last_updated": "2026-11-27T15:57:48.954640+00:00",
    "context": {
     "id": "01M8EVMA0T9CTK9RCN3EYTBR7W",
     "parent_id": null,
     "user_id": "f1eb3867fb304403a156ead7a37b6a78"
    }
   }
  },
  "origin": "LOCAL",
  "time_fired": "2026-11-27T15:57:48.954640+00:00",
  "context": {
   "id": "01M8EVMA0T9CTK9RCN3EYTBR7W",
   "parent_id": null,
   "user_id": "f1eb3867fb304403a156ead7a37b6a78"
  }
 },
 "state_changed_template_sensor": {
  "event_type": "state_changed",
  "data": {
   "entity_id": "sensor.acc_temperature_average",
   "old_state": {
    "entity_id": "sensor.acc_temperature_average",
    "state": "-20.0",
    "attributes": {
     "state_class": "measurement",
     "unit_of_measurement": "°C",
     "device_class": "temperature",
     "friendly_name": "Acc temperature average"
    },
    "last_changed": "2026-11-27T15:57:43.483925+00:00",
    "last_updated": "2026-11-27T15:57:43.483925+00:00",
    "context": {
     "id": "01M8EVM4NVRHPX89J58SQCSXWM",
     "parent_id": null,
     "user_id": null
    }
   },
   "new_state": {
    "entity_id": "sensor.acc_temperature_average",
    "state": "0.65",
    "attributes": {
     "state_class": "measurement",
     "unit_of_measurement": "°C",
     "device_class": "temperature",
     "friendly_name": "Acc temperature average"
    },
    "last_changed": "2026-11-27T15:57:48.951097+00:00",
    "last_updated": "2026-11-27T15:57:48.951097+00:00",
    "context": {
     "id": "01M8EVMA0KKWYAABQJ3ZNVVFNB",
     "parent_id": null,
     "user_id": "f1eb3867fb304403a156ead7a37b6a78"
    }
   }
  },
  "origin": "LOCAL",
  "time_fired": "2026-11-27T15:57:48.951097+00:00",
  "context": {
   "id": "01M8EVMA0KKWYAABQJ3ZNVVFNB",
   "parent_id": null,
   "user_id": "f1eb3867fb304403a156ead7a37b6a78"
  }
 }
}
""")


def converter(state_changed: dict | None = None) -> StateChangedSchemaHA:
    return StateChangedSchemaHA(build_schema({"state_changed": state_changed or {}})
                                .state_changed)


def line(name: str, state_changed: dict | None = None) -> str | None:
    return converter(state_changed).to_line(SAMPLE_EVENTS[name])


def state_event(entity_id: str, state: str, attributes: dict,
                stamp: str = "2026-11-27T15:57:48.951097+00:00") -> dict:
    new_state = {"entity_id": entity_id, "state": state, "attributes": attributes,
                 "last_changed": stamp, "last_updated": stamp, "context": None}
    return {"event_type": "state_changed", "time_fired": stamp, "origin": "LOCAL",
            "data": {"entity_id": entity_id, "old_state": None, "new_state": new_state}}


# ---- the real frames, default options ------------------------------------------------------

def test_input_number_goes_to_its_unit_with_value_and_attributes():
    assert line("state_changed_input_number") == (
        "°C,domain=input_number,entity_id=acc_temp_1 editable=0.0,"
        'friendly_name_str="Acc temperature 1",initial_str="None",max=50.0,min=-20.0,'
        'mode_str="box",step=0.1,value=21.3 1795795068948479000')


def test_template_sensor_keeps_device_class_as_a_string_field():
    assert line("state_changed_template_sensor") == (
        '°C,domain=sensor,entity_id=acc_temperature_average device_class_str="temperature",'
        'friendly_name_str="Acc temperature average",state_class_str="measurement",value=0.65 '
        "1795795068951097000")


def test_on_off_state_has_both_state_and_value():
    assert line("state_changed_input_boolean") == (
        "input_boolean.acc_switch_1,domain=input_boolean,entity_id=acc_switch_1 editable=0.0,"
        'friendly_name_str="Acc switch 1",state="on",value=1.0 1795795068942943000')


def test_text_state_has_only_the_state_field_and_lists_are_python_reprs():
    assert line("state_changed_input_select") == (
        "input_select.acc_mode,domain=input_select,entity_id=acc_mode editable=0.0,"
        "friendly_name_str=\"Acc mode\",options_str=\"['eco', 'comfort', 'away', 'boost']\","
        'state="comfort" 1795795068957796000')
    assert 'state="capture 1795795068"' in line("state_changed_input_text")
    assert "value=" not in line("state_changed_input_text")


def test_counter_is_a_plain_value():
    assert line("state_changed_counter") == (
        "counter.acc_counter,domain=counter,entity_id=acc_counter editable=0.0,"
        'friendly_name_str="Acc counter",initial=0.0,step=1.0,value=1.0 1795795068949713000')


def test_datetime_attribute_is_written_as_ha_writes_a_datetime():
    # HA holds last_triggered as a datetime: str() has a space, and the digit-tail rule adds
    # a float field from its digits.
    got = line("state_changed_automation")
    assert 'last_triggered_str="2026-11-27 15:57:48.944151+00:00"' in got
    assert "last_triggered=20261127155748.945," in got
    as_sent = line("state_changed_automation", {"datetime_attributes": []})
    assert 'last_triggered_str="2026-11-27T15:57:48.944151+00:00"' in as_sent


def test_time_is_time_fired_in_ns_and_resync_gives_the_identical_point():
    live = SAMPLE_EVENTS["state_changed_template_sensor"]
    resync = state_as_event(live["data"]["new_state"], "resync")
    backfill = state_as_event(live["data"]["new_state"], "backfill")
    conv = Converter(build_schema({}))
    assert conv.convert(ha_event(live)) == conv.convert(resync) == conv.convert(backfill)


@pytest.mark.parametrize("state", ["unknown", "unavailable", ""])
def test_unknown_unavailable_and_empty_states_are_skipped(state):
    assert converter().to_line(state_event("sensor.x", state, {})) is None


def test_removed_entity_is_skipped():
    event = copy.deepcopy(SAMPLE_EVENTS["state_changed_counter"])
    event["data"]["new_state"] = None
    assert converter().to_line(event) is None


# ---- HA's special cases --------------------------------------------------------------------

def test_attribute_named_like_a_field_gets_a_trailing_underscore():
    got = converter().to_line(state_event("sensor.x", "5", {"value": 7, "state": "s"}))
    assert got.split(" ")[1] == 'state_str="s",value=5.0,value_=7.0'


def test_non_finite_attributes_are_left_out_and_digit_tails_become_numbers():
    got = converter().to_line(state_event("sensor.x", "5", {
        "a": float("nan"), "b": "inf", "c": "firmware 1.2.3", "d": "v12.5beta", "e": None,
        "f": True, "g": {"k": 1}}))
    fields = got.split(" ", 1)[1]
    assert not fields.startswith(("a=", "b=")) and ",a=" not in fields and ",b=" not in fields
    assert 'b_str="inf"' not in fields   # float("inf") succeeds, then the value is dropped
    assert 'c_str="firmware 1.2.3"' in fields and ",c=" not in fields
    assert 'd_str="v12.5beta"' in fields and "d=12.5" in fields
    assert 'e_str="None"' in fields and "f=1.0" in fields
    assert "g_str=\"{'k': 1}\"" in fields


def test_numeric_nan_state_is_a_conversion_error_not_a_lost_batch():
    with pytest.raises(ConversionError, match="finite"):
        Converter(build_schema({})).convert(ha_event(state_event("sensor.x", "nan", {})))


def test_names_and_strings_are_escaped_like_influxdb_python():
    got = converter().to_line(state_event("sensor.x", 'a "quoted"\\ text\nnext', {
        "unit_of_measurement": "kW h,=x", "my key": "v"}))
    assert got.startswith("kW\\ h\\,\\=x,domain=sensor,entity_id=x ")
    assert 'my\\ key_str="v"' in got
    assert 'state="a \\"quoted\\"\\\\ text\\nnext"' in got


# ---- options -------------------------------------------------------------------------------

def test_measurement_attr_domain__device_class_and_entity_id():
    sensor = "state_changed_template_sensor"
    got = line(sensor, {"measurement_attr": "domain__device_class"})
    assert got.startswith("sensor__temperature,")
    assert "device_class_str" not in got and 'unit_of_measurement_str="°C"' in got
    assert line(sensor, {"measurement_attr": "entity_id"}).startswith(
        "sensor.acc_temperature_average,")
    assert line("state_changed_counter", {"measurement_attr": "domain__device_class"}
                ).startswith("counter,")


def test_default_and_override_measurement():
    assert line("state_changed_counter", {"default_measurement": "state"}).startswith("state,")
    assert line("state_changed_input_number", {"default_measurement": "state"}
                ).startswith("°C,")
    got = line("state_changed_input_number", {"override_measurement": "all"})
    assert got.startswith("all,") and 'unit_of_measurement_str="°C"' in got


def test_component_config_exact_beats_glob_beats_domain():
    options = {"component_config_domain": {"input_number": {"override_measurement": "dom"}},
               "component_config_glob": {"input_number.acc_*": {"override_measurement": "glob",
                                                                 "ignore_attributes": ["mode"]}},
               "component_config": {"input_number.acc_temp_1": {"override_measurement": "exact"}}}
    got = line("state_changed_input_number", options)
    assert got.startswith("exact,") and "mode_str" not in got
    del options["component_config"]
    assert line("state_changed_input_number", options).startswith("glob,")
    del options["component_config_glob"]
    assert line("state_changed_input_number", options).startswith("dom,")


def test_tags_tags_attributes_and_ignore_attributes():
    got = line("state_changed_input_number", {
        "tags": {"instance": "prod", "domain": "overridden"},
        "tags_attributes": ["friendly_name", "initial"], "ignore_attributes": ["mode", "min"]})
    assert got.startswith("°C,domain=overridden,entity_id=acc_temp_1,"
                          "friendly_name=Acc\\ temperature\\ 1,instance=prod ")
    assert "initial" not in got        # None as a tag value is left out, as influxdb-python does
    assert "mode_str" not in got and "min=" not in got and "max=50.0" in got


@pytest.mark.parametrize("options, written", [
    ({}, {"sensor.a", "sensor.b", "light.c", "switch.d"}),
    ({"include": {"domains": ["sensor"]}}, {"sensor.a", "sensor.b"}),
    ({"exclude": {"entities": ["sensor.a"]}}, {"sensor.b", "light.c", "switch.d"}),
    ({"include": {"domains": ["sensor"]}, "exclude": {"entities": ["sensor.a"]}}, {"sensor.b"}),
    ({"include": {"entity_globs": ["*.b", "light.*"]}, "exclude": {"entity_globs": ["light.*"]}},
     {"sensor.b", "light.c"}),
    ({"exclude": {"domains": ["sensor"]}, "include": {"entities": ["sensor.a"]}},
     {"sensor.a", "light.c", "switch.d"}),
    ({"include": {"entities": ["switch.d"]}, "exclude": {"entities": ["switch.d"]}},
     {"switch.d"}),
])
def test_include_exclude_follow_has_entity_filter(options, written):
    conv = converter(options)
    got = {e for e in ("sensor.a", "sensor.b", "light.c", "switch.d")
           if conv.to_line(state_event(e, "1", {})) is not None}
    assert got == written


def test_malformed_events_are_conversion_errors_naming_the_problem():
    conv = Converter(build_schema({}))
    bad_time = ha_event(state_event("sensor.x", "1", {}, stamp="yesterday"))
    with pytest.raises(ConversionError, match="yesterday"):
        conv.convert(bad_time)
    no_entity = ha_event(state_event("sensor.x", "1", {}))
    del no_entity["event"]["data"]["new_state"]["entity_id"]
    with pytest.raises(ConversionError, match="entity_id"):
        conv.convert(no_entity)
    with pytest.raises(ConversionError, match="source"):
        conv.convert({"src": "carrier pigeon"})
