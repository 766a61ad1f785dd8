"""One set of MQTT topic-filter rules (ha_ingestor/topicfilter.py), checked against paho's own
matcher, and applied the same way by `config check`, the collector's exclusions and the writer's
topic rules."""

from __future__ import annotations

import subprocess
import sys

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ha_ingestor.config.schema import build_schema
from ha_ingestor.envelope import mqtt_event
from ha_ingestor.topicfilter import FilterError, Pattern, TopicSet, validate
from writer.schema_mqtt import MqttSchemaConverter

FILTERS = ["#", "a/#", "+/b", "a/+/c", "a/b", "+", "+/#", "$SYS/#", "a/+", "sport/tennis/#",
           "/+", "+/+/+", "$SYS/+", "+/x"]
TOPICS = ["a", "a/b", "a/b/c", "x/b", "b", "$SYS/x", "$SYS", "a/x/c", "sport/tennis",
          "sport/tennis/p1", "sport", "a//c", "/b", "a/b/", "/", "$SYS/b", "$x/x"]
BAD = ["a#", "a/#/b", "a+", "#/a", "sport/ten+nis", "", "a/\x00"]


@pytest.mark.parametrize("topic_filter", FILTERS)
def test_matches_like_paho(topic_filter):
    matches = TopicSet([topic_filter]).matches
    for topic in TOPICS:
        assert matches(topic) == mqtt.topic_matches_sub(topic_filter, topic), topic


LEVEL = st.sampled_from(["a", "b", "", "$SYS", "$x", "+", "#", "x y"])


@settings(max_examples=300, deadline=None)
@given(st.lists(LEVEL, min_size=1, max_size=4), st.lists(LEVEL.filter(
    lambda level: level not in ("+", "#")), min_size=1, max_size=4))
def test_any_valid_filter_matches_like_paho(filter_levels, topic_levels):
    topic_filter, topic = "/".join(filter_levels), "/".join(topic_levels)
    try:
        validate(topic_filter)
    except FilterError:
        with pytest.raises(ValueError):          # paho refuses the same filters
            _paho_validate(topic_filter)
        return
    _paho_validate(topic_filter)                 # and accepts the others
    assert Pattern.compile(topic_filter).matches(topic) == \
        mqtt.topic_matches_sub(topic_filter, topic)


def _paho_validate(topic_filter: str) -> None:
    """paho's own check of a subscription filter."""
    if mqtt.Client._filter_wildcard_len_check(topic_filter.encode()) != mqtt.MQTT_ERR_SUCCESS:
        raise ValueError(topic_filter)


@pytest.mark.parametrize("bad", BAD)
def test_invalid_filters_are_refused_with_the_filter_named(bad):
    with pytest.raises(FilterError) as err:
        validate(bad)
    assert repr(bad) in str(err.value) or not bad


@pytest.mark.parametrize("key", ["topics", "exclude_topics"])
def test_config_check_refuses_what_the_collector_would(tmp_path, key):
    path = tmp_path / "c.yaml"
    path.write_text(f"homeassistant: {{enabled: false}}\nmqtt: {{{key}: ['ok/#', 'a/#/b']}}\n")
    done = subprocess.run([sys.executable, "-m", "ha_ingestor", "--config", str(path),
                           "config", "check"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"mqtt.{key}[1]: '#' must be the last level: 'a/#/b'" in done.stderr


def test_writer_rules_follow_the_dollar_topic_rule():
    schema = build_schema({"mqtt": {"rules": [{"topic": "+dev/state", "measurement": "r"}]}})
    convert = MqttSchemaConverter(schema.mqtt).to_line
    ordinary = convert(mqtt_event("kitchen/state", b"1", 1, False, 10))
    system = convert(mqtt_event("$SYS/state", b"1", 1, False, 10))
    assert ordinary.startswith("r,")
    assert system.startswith("mqtt,")            # no rule: the default measurement


def test_writer_rule_topic_uses_the_same_rules():
    with pytest.raises(Exception) as err:
        build_schema({"mqtt": {"rules": [{"topic": "a/#rest/b"}]}})
    assert "schema.mqtt.rules[0].topic: '#' must be the last level" in str(err.value)
