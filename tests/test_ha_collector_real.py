"""The HA collector against a real Home Assistant 2024.3.3 (one HA shared by the session).

Reference: our own subscription to HA's event bus (``EventRecorder``) sees what HA fired; the
collector's queue must hold the same events, unchanged, whatever happened to the collector or HA.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from datetime import datetime, timezone

import pytest

from collectors.homeassistant.committer import epoch
from tests.support.fixtures_homeassistant import (collector_overrides, state_changes,
                                                  state_key, wait_for_keys)
from tests.support.procs import kill_process, tail, wait_until
from tests.support.real_ha import CONFIG_ENTITIES, EventRecorder, change_calls, drive

pytestmark = [pytest.mark.realha, pytest.mark.slow]


def start_collector(ingestor, real_ha, name: str):
    ing = ingestor(collector_overrides(real_ha.ws_url, real_ha.token, backfill_margin="3s"),
                   name=name)
    proc = ing.start("collect", "ha", log="ha")
    wait_for_resyncs(ing, 1)
    return ing, proc


def wait_for_resyncs(ing, count: int, timeout: float = 60) -> None:
    """Wait for the ``count``-th get_states snapshot in the queue (one per connection)."""
    def snapshots() -> int:
        resync = [e for e in ing.read_all("ha") if e["kind"] == "resync"]
        per_entity = Counter(e["event"]["data"]["entity_id"] for e in resync)
        return min(per_entity.values(), default=0)
    try:
        wait_until(lambda: snapshots() >= count, timeout, f"resync snapshot {count}",
                   interval=0.3)
    except TimeoutError:
        pytest.fail(f"no resync snapshot {count}:\n{tail(ing.log_path('ha'))}")


def wait_for_events(ing, reference: list[dict], timeout: float = 60) -> list[dict]:
    """Wait until every state change of ``reference`` is in the queue; returns the queue."""
    return wait_for_keys(ing, {(e["data"]["entity_id"], e["time_fired"]) for e in reference
                               if e["event_type"] == "state_changed"}, timeout)


def wait_for_every_live_event(ing, reference: list[dict], timeout: float = 60) -> list[dict]:
    """Wait until every event of ``reference``, of any type, is in the queue as a live event: the
    last call_service can arrive after the last state change the reference saw."""
    wanted = {(e["event_type"], e["time_fired"]) for e in reference}
    envelopes: list[dict] = []

    def arrived() -> bool:
        nonlocal envelopes
        envelopes = ing.read_all("ha")
        return wanted <= {(e["event"]["event_type"], e["event"]["time_fired"])
                          for e in envelopes if e["kind"] == "live"}
    try:
        wait_until(arrived, timeout, "every live event in the queue", interval=0.5)
    except TimeoutError:
        pass     # the comparison below names what is missing
    return envelopes


def test_2000_state_changes_then_ha_restart(ingestor, real_ha):
    ing, proc = start_collector(ingestor, real_ha, "restart")
    recorder = EventRecorder(real_ha)
    with real_ha.client() as client:
        calls = change_calls(10_000)
        while len(recorder.state_changes()) < 2000:
            drive(client, (next(calls) for _ in range(200)))
    time.sleep(1)
    seen = recorder.stop()
    changes = [e for e in seen if e["event_type"] == "state_changed"]
    assert len(changes) >= 2000
    print(f"real HA: {len(seen)} events, at most {recorder.max_rate()} events/s")

    wait_for_events(ing, seen)
    envelopes = wait_for_every_live_event(ing, seen)
    live = {(e["event"]["event_type"], e["event"]["time_fired"]): e["event"]
            for e in envelopes if e["kind"] == "live"}
    for event in seen:   # every event, unchanged: time_fired, context, attributes, old_state
        assert live.get((event["event_type"], event["time_fired"])) == event
    types = Counter(e["event_type"] for e in seen)
    assert types["call_service"] >= 1000 and types["automation_triggered"] >= 100

    # HA restarts: the collector reconnects, backfills what HA did while it was away (the start-up
    # state restores fire before HA accepts connections), and resyncs.
    before_restart = len(envelopes)
    restart_began = datetime.now(timezone.utc)
    real_ha.restart()
    wait_for_resyncs(ing, 2)
    recorder = EventRecorder(real_ha)
    with real_ha.client() as client:
        drive(client, change_calls(60, start=7))
    time.sleep(1)
    after = recorder.stop()
    envelopes = wait_for_events(ing, after)
    assert len(envelopes) > before_restart
    # What HA's recorder holds since the restart began (the start-up states fired before HA
    # accepted connections included) is in the queue, at the recorded times.
    with real_ha.client() as client:
        history = client.command({"type": "history/history_during_period",
                                  "start_time": restart_began.isoformat(),
                                  "entity_ids": list(CONFIG_ENTITIES),
                                  "include_start_time_state": False,
                                  "significant_changes_only": False, "no_attributes": True,
                                  "minimal_response": False})
    recorded = {(entity_id, datetime.fromtimestamp(row["lu"], tz=timezone.utc).isoformat())
                for entity_id, rows in history.items() for row in rows}
    assert recorded, "HA recorded nothing since the restart"

    def stored() -> set:   # the second backfill pass runs backfill_margin after the reconnect
        return {state_key(e) for e in state_changes(ing.read_all("ha")) if e["kind"] != "resync"}
    try:
        wait_until(lambda: recorded <= stored(), 30, "the recorder's states since the restart")
    except TimeoutError:
        pytest.fail(f"not backfilled: {sorted(recorded - stored())[:5]}\n"
                    f"{tail(ing.log_path('ha'))}")
    envelopes = ing.read_all("ha")
    kinds = Counter(e["kind"] for e in envelopes[before_restart:])
    assert kinds["resync"] >= 10 and kinds["live"] >= 60
    log_text = ing.log_path("ha").read_text()
    assert "reconnecting to" in log_text and log_text.count("connected to Home Assistant") >= 2
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def test_sigkill_while_ha_keeps_changing_states(ingestor, real_ha):
    ing, proc = start_collector(ingestor, real_ha, "sigkill")
    recorder = EventRecorder(real_ha)
    driving = threading.Event()

    def keep_changing() -> None:
        with real_ha.client() as client:
            drive(client, change_calls(1000, start=3), rate=100)   # 10 s at 100 calls/s
        driving.set()

    driver = threading.Thread(target=keep_changing)
    driver.start()
    time.sleep(3)
    committed_before_kill = {state_key(e) for e in state_changes(ing.read_all("ha"), "live")}
    kill_process(proc)
    killed_at = len(recorder.state_changes())
    time.sleep(3)
    proc = ing.start("collect", "ha", log="ha")
    restarted_at = len(recorder.state_changes())
    driver.join(60)
    assert driving.is_set()
    time.sleep(1)
    seen = recorder.stop()
    changes = [e for e in seen if e["event_type"] == "state_changed"]
    assert restarted_at - killed_at > 100, "HA should have changed states while we were dead"

    envelopes = wait_for_events(ing, seen, timeout=90)
    by_key: dict[tuple, list[dict]] = {}
    for envelope in state_changes(envelopes):
        if envelope["kind"] != "resync":
            by_key.setdefault(state_key(envelope), []).append(envelope)
    # Once each: no state change stored twice (the backfill skips what was committed).
    assert [k for k, copies in by_key.items() if len(copies) > 1] == []
    assert committed_before_kill <= set(by_key)
    # Changes fired while the collector was dead came back from the recorder, with their time.
    for event in changes[killed_at:restarted_at]:
        key = (event["data"]["entity_id"], event["time_fired"])
        stored = by_key[key][0]["event"]
        original = event["data"]["new_state"]
        assert stored["time_fired"] == original["last_updated"] == event["time_fired"]
        assert stored["data"]["new_state"]["state"] == original["state"]
        assert stored["data"]["new_state"]["last_changed"] == original["last_changed"]
        assert stored["data"]["new_state"]["attributes"].items() <= original["attributes"].items()
    kinds = Counter(by_key[(e["data"]["entity_id"], e["time_fired"])][0]["kind"]
                    for e in changes[killed_at:restarted_at])
    assert kinds["backfill"] > 0
    # The resync after the restart holds every entity's state as it was at that moment.
    with real_ha.client() as client:
        current = {s["entity_id"]: s for s in client.get_states()}
    resync = {}
    for envelope in envelopes:
        if envelope["kind"] == "resync":
            resync[envelope["event"]["data"]["entity_id"]] = envelope["event"]
    assert set(current) <= set(resync)
    latest: dict[str, dict] = {}   # the newest state per entity by time, as InfluxDB keeps it
    for envelope in state_changes(envelopes):
        state = envelope["event"]["data"]["new_state"]
        known = latest.get(state["entity_id"])
        if known is None or epoch(state["last_updated"]) >= epoch(known["last_updated"]):
            latest[state["entity_id"]] = state
    for entity_id, state in current.items():   # the newest state in the queue is HA's current
        assert latest[entity_id]["state"] == state["state"], entity_id
        assert latest[entity_id]["last_updated"] == state["last_updated"], entity_id
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def test_real_ha_refuses_a_non_admin_token_and_the_collector_says_so(ingestor, real_ha):
    token = real_ha.user_token("family_member")
    ing = ingestor(collector_overrides(real_ha.ws_url, token), name="non-admin")
    result = ing.run("collect", "ha", timeout=60)
    assert result.returncode == 3, result.stderr
    assert "the token's user is not an administrator" in result.stderr
    assert token not in result.stderr


def test_real_ha_without_recorder_logs_the_unfillable_gap(ingestor, real_ha_factory):
    ha = real_ha_factory(recorder=False, name="no-recorder")
    ing, proc = start_collector(ingestor, ha, "no-recorder")
    with ha.client() as client:
        drive(client, change_calls(10))
    time.sleep(1)                   # committed: the collector now has a watermark
    kill_process(proc)
    proc = ing.start("collect", "ha", log="ha")
    wait_for_resyncs(ing, 2)
    wait_until(lambda: "has no history/recorder integration" in ing.log_path("ha").read_text(),
               30, "the no-recorder warning")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
