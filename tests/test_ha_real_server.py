"""The real-HA fixture itself, on every tested release: HA starts, onboards, gives an admin token,
and its helpers, automation and recorder behave as the collector tests rely on."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from tests.support.real_ha import CONFIG_ENTITIES

pytestmark = pytest.mark.realha


def test_real_ha_token_states_and_events(real_ha):
    with real_ha.client() as client:
        assert client.ha_version == real_ha.version
        entity_ids = {state["entity_id"] for state in client.get_states()}
        assert set(CONFIG_ENTITIES) <= entity_ids
        client.subscribe_events()   # all event types: only an admin token may do this
        client.call_service("input_boolean", "toggle",
                            target={"entity_id": "input_boolean.acc_switch_1"})
        seen = _collect_events(client, 3.0)
    types = {event["event_type"] for event in seen}
    assert {"call_service", "state_changed", "automation_triggered"} <= types
    changed = {e["data"]["entity_id"] for e in seen if e["event_type"] == "state_changed"}
    assert {"input_boolean.acc_switch_1", "counter.acc_counter"} <= changed


def test_recorder_history_reproduces_time_fired(real_ha):
    """The history API's compressed ``lu`` (epoch float) rounds back to the live ``time_fired``.
    HA 2024.3.3 stored the microsecond exactly; since 2024.7 the recorder keeps HA's
    ``time.time()`` float whole, up to half a microsecond off (the backfill compares at the
    microsecond for that reason)."""
    values = [round(11.1 + n, 1) for n in range(20)]
    with real_ha.client() as client:
        client.subscribe_events("state_changed")
        start = datetime.now(timezone.utc).isoformat()
        for value in values:
            client.call_service("input_number", "set_value", {"value": value},
                                target={"entity_id": "input_number.acc_temp_2"})
        live = [e for e in _collect_events(client, 2.0)
                if e["data"]["entity_id"] == "input_number.acc_temp_2"]
        time.sleep(2.0)   # recorder commit_interval is 1 s
        history = client.command({"type": "history/history_during_period",
                                  "start_time": start, "entity_ids": ["input_number.acc_temp_2"],
                                  "include_start_time_state": False,
                                  "significant_changes_only": False, "no_attributes": False,
                                  "minimal_response": False})
    rows = history["input_number.acc_temp_2"]
    assert [row["s"] for row in rows] == [str(v) for v in values]
    rebuilt = [datetime.fromtimestamp(row["lu"], tz=timezone.utc).isoformat() for row in rows]
    assert rebuilt == [event["time_fired"] for event in live]
    assert rebuilt == [event["data"]["new_state"]["last_updated"] for event in live]
    exact = [row["lu"] == datetime.fromisoformat(t).timestamp() for row, t in zip(rows, rebuilt)]
    assert all(exact) == (real_ha.version == "2024.3.3"), exact


def _collect_events(client, seconds: float) -> list[dict]:
    deadline = time.monotonic() + seconds
    events = []
    while (remaining := deadline - time.monotonic()) > 0:
        event = client.recv_event(remaining)
        if event is not None:
            events.append(event)
    return events
