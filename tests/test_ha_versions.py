"""What differs between the tested Home Assistant releases (2024.3.3, 2025.4.4), each difference
shown on the real HA of every release, next to what ha-ingestor does about it.

Shown elsewhere: the recorder's float times (tests/test_ha_units.py on the captured answers,
test_ha_real_server.py and the SIGKILL test in test_ha_collector_real.py on the real HA), and the
``influxdb`` integration's points (test_schema_ha_parity.py, test_writer_parity_ha.py).
"""

from __future__ import annotations

import copy
import json
import signal
import subprocess

import pytest

from ha_ingestor.config.schema import CONNECTION_KEYS, STATE_CHANGED_KEYS, build_schema
from tests.support.fixtures_homeassistant import collector_overrides, ha_venv_or_skip
from tests.support.procs import tail, wait_until
from tests.support.real_ha import HAClientError
from writer.schema_ha import StateChangedSchemaHA

pytestmark = pytest.mark.realha

NEWER = "2025.4.4"


def test_states_carry_last_reported_since_2024_4_and_it_changes_no_point(real_ha):
    with real_ha.client() as client:
        states = client.get_states()
    assert {"last_reported" in state for state in states} == {real_ha.version == NEWER}
    # HA's integration never reads it; neither does the writer: the same point without it.
    schema = StateChangedSchemaHA(build_schema({}).state_changed)
    for state in states:
        event = {"event_type": "state_changed", "time_fired": state["last_updated"],
                 "origin": "LOCAL", "data": {"entity_id": state["entity_id"],
                                             "old_state": None, "new_state": state}}
        without = copy.deepcopy(event)
        without["data"]["new_state"].pop("last_reported", None)
        assert schema.to_line(event) == schema.to_line(without)


def test_state_reported_cannot_be_subscribed_and_config_check_says_so(real_ha, ingestor):
    with real_ha.client() as client:
        if real_ha.version == NEWER:
            with pytest.raises(HAClientError) as refused:
                client.subscribe_events("state_reported")
            assert refused.value.code == "home_assistant_error"
            assert "Event filter is required for event state_reported" in str(refused.value)
        else:
            client.subscribe_events("state_reported")    # accepted; 2024.3 never fires it
    ing = ingestor(collector_overrides(real_ha.ws_url, real_ha.token,
                                       event_types=["state_changed", "state_reported"]))
    result = ing.run("config", "check")
    assert result.returncode == 2, result.stderr
    assert "homeassistant.event_types: 'state_reported' cannot be subscribed" in result.stderr


def test_registry_events_a_non_admin_may_subscribe_to(real_ha, ingestor):
    """HA 2024.4 added the floor, label and category registries, and lets every user subscribe
    to their update events; 2024.3.3 refuses a non-admin, and the collector exits 3 saying why."""
    token = real_ha.user_token("registry_reader")
    ing = ingestor(collector_overrides(real_ha.ws_url, token,
                                       event_types=["floor_registry_updated"]))
    if real_ha.version != NEWER:
        result = ing.run("collect", "ha", timeout=60)
        assert result.returncode == 3, result.stderr
        assert "the token's user is not an administrator" in result.stderr
        return
    proc = ing.start("collect", "ha", log="ha")
    wait_until(lambda: "subscribed to floor_registry_updated" in ing.log_path("ha").read_text(),
               30, "the subscription", interval=0.3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, tail(ing.log_path("ha"))


INTEGRATION_FACTS = r"""
import json, pathlib
from homeassistant.components import influxdb
from homeassistant.components.influxdb import const
keys = {str(k) for k in influxdb._INFLUX_BASE_SCHEMA.schema}
keys |= {str(k) for k in const.COMPONENT_CONFIG_SCHEMA_CONNECTION}
folder = pathlib.Path(influxdb.__file__).parent
print(json.dumps({"keys": sorted(keys), "batch": [const.BATCH_BUFFER_SIZE, const.BATCH_TIMEOUT],
                  "backlog_s": const.QUEUE_BACKLOG_SECONDS,
                  "config_flow": (folder / "config_flow.py").exists()}))
"""


def test_influxdb_integration_options_batching_and_yaml_set_up(ha_version):
    """The same YAML options, batching and 30 s backlog in both releases, configured by YAML
    only; every option is one we take (schema.state_changed) or refuse as a connection setting."""
    python = ha_venv_or_skip(ha_version, ("influxdb",)) / "bin" / "python"
    done = subprocess.run([str(python), "-c", INTEGRATION_FACTS], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    facts = json.loads(done.stdout)
    assert facts["batch"] == [100, 1] and facts["backlog_s"] == 30
    assert facts["config_flow"] is False
    ha_keys = set(facts["keys"])
    ours_only = {"enabled", "datetime_attributes"}
    assert ha_keys - set(CONNECTION_KEYS) == set(STATE_CHANGED_KEYS) - ours_only
    assert ha_keys & set(CONNECTION_KEYS) == set(CONNECTION_KEYS)
