"""The HA collector against the project's HA test server: the faults a real HA cannot be made to
produce on demand. Each test runs ``ha-ingestor collect ha`` as a process and reads the queue file
the way the writer would.

Counting rule: the server records every state change it fires (``fired_states``); a change fired
after the collector's first subscription must be in the queue (live, or backfilled after a gap),
and no live event may be there twice.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.support.fixtures_homeassistant import (collector_overrides, metric, scrape,
                                                  state_changes, state_key, wait_for_keys)
from tests.support.ha_test_server import DEFAULT_PROTOCOL, HATestServer
from tests.support.ha_venv import HA_VERSIONS
from tests.support.procs import tail, wait_until


def start_collector(ingestor, server, name: str = "ing", **ha):
    ing = ingestor(collector_overrides(server.url, server.token, **ha), name=name)
    proc = ing.start("collect", "ha", log="ha")
    try:
        server.wait_for_subscribers(1, timeout=30)
    except TimeoutError:
        pytest.fail(f"collector did not subscribe:\n{tail(ing.log_path('ha'))}")
    return ing, proc


def metrics_port(ing) -> int:
    return ing.config["metrics"]["ports"]["ha"]


def stop_collector(ing, proc) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, tail(ing.log_path("ha"))


def assert_each_change_once(envelopes: list[dict]) -> None:
    """Live or backfilled, never both: the backfill skips what was committed or seen."""
    keys = [state_key(e) for e in state_changes(envelopes) if e["kind"] != "resync"]
    assert len(keys) == len(set(keys)), f"{len(keys) - len(set(keys))} changes stored twice"


@pytest.fixture
def server(request):
    """The test server as the newest tested HA, or as ``param`` (indirect parametrization)."""
    version = getattr(request, "param", DEFAULT_PROTOCOL)
    srv = HATestServer(token="test-token", recorder_lag=1.0, ha_version=version).start()
    yield srv
    srv.stop()


# HA 2024.3.3's recorder times are microsecond-exact, 2025.4.4's are time.time() floats.
@pytest.mark.parametrize("server", HA_VERSIONS, indirect=True, ids=[f"as{v}" for v in HA_VERSIONS])
def test_connection_dropped_mid_stream_is_backfilled(ingestor, server):
    ing, proc = start_collector(ingestor, server)
    first = len(server.fired_states)
    server.set_rate(300)
    time.sleep(2)
    server.drop_connections()
    time.sleep(1.5)              # events fired while the collector is away
    server.wait_for_subscribers(1)
    time.sleep(1)
    server.set_rate(0)
    wanted = set(server.fired_states[first:])
    envelopes = wait_for_keys(ing, wanted)
    assert_each_change_once(envelopes)
    backfilled = {state_key(e) for e in state_changes(envelopes, "backfill")}
    assert backfilled, "nothing was backfilled after the drop"
    # Backfilled copies carry the original time: exactly the keys the server fired.
    assert backfilled <= set(server.fired_states)
    samples = scrape(metrics_port(ing))
    assert metric(samples, "ha_ingestor_reconnects_total", component="ha") >= 1
    assert metric(samples, "ha_ingestor_events_dropped_total", source="ha",
                  reason="drop_newest") == 0
    stop_collector(ing, proc)
    envelopes = ing.read_all("ha")
    received = metric(samples, "ha_ingestor_events_received_total", source="ha")
    assert len([e for e in envelopes if e["kind"] == "live"]) == received   # counts reconcile


def test_frozen_server_is_detected_within_30_s(ingestor, server):
    ing, proc = start_collector(ingestor, server, ping_interval="10s", ping_timeout="10s")
    first = len(server.fired_states)
    server.set_rate(50)
    time.sleep(1)
    connections = server.stats["connections"]
    frozen_at = time.monotonic()
    server.freeze()
    wait_until(lambda: server.stats["connections"] > connections, 30,
               "a reconnect after HA froze")
    detected_after = time.monotonic() - frozen_at
    assert detected_after < 30
    server.unfreeze()
    server.wait_for_subscribers(1, timeout=60)
    time.sleep(3)                # the second backfill pass runs backfill_margin after subscribing
    server.set_rate(0)
    envelopes = wait_for_keys(ing, set(server.fired_states[first:]))
    assert_each_change_once(envelopes)
    assert "no pong from Home Assistant" in ing.log_path("ha").read_text()
    stop_collector(ing, proc)


def test_auth_invalid_exits_3_without_retrying(ingestor, server):
    ing = ingestor(collector_overrides(server.url, "not-the-token"))
    started = time.monotonic()
    result = ing.run("collect", "ha", timeout=60)
    assert result.returncode == 3, result.stderr
    assert "rejected the access token" in result.stderr
    assert "homeassistant.token" in result.stderr
    assert "not-the-token" not in result.stderr          # never log a secret
    assert server.stats["auth_invalid"] == 1             # one attempt: HA bans retrying IPs
    assert time.monotonic() - started < 30


def test_non_admin_token_is_told_plainly(ingestor):
    srv = HATestServer(token="user-token", admin=False).start()
    try:
        ing = ingestor(collector_overrides(srv.url, srv.token))
        result = ing.run("collect", "ha", timeout=60)
        assert result.returncode == 3, result.stderr
        assert "not an administrator" in result.stderr
        # state_changed is on HA's allow-list for every user: that much works without admin.
        ing, proc = start_collector(ingestor, srv, name="user", event_types=["state_changed"])
        event = srv.set_state("sensor.for_users", "1")
        wait_for_keys(ing, {("sensor.for_users", event["time_fired"])})
        stop_collector(ing, proc)
    finally:
        srv.stop()


def test_ready_only_once_ha_has_answered_the_subscription(ingestor):
    """/readyz turns 200 only once HA has answered ``subscribe_events``, so an event fired right
    after readiness is in the queue. The server takes 3 s to register and answer the subscription,
    as a busy HA can; an event fired before that reaches no client, and only state changes could
    come back from a recorder."""
    srv = HATestServer(token="test-token", subscribe_delay=3.0).start()
    try:
        ing = ingestor(collector_overrides(srv.url, srv.token, ping_interval="10s",
                                           ping_timeout="10s"))
        proc = ing.start("collect", "ha", log="ha")
        wait_until(lambda: ing.ready("ha") or proc.poll() is not None, 30, "/readyz 200")
        assert proc.poll() is None, tail(ing.log_path("ha"))
        fired = srv.fire_event("ha_ingestor_probe", {"n": 1})
        assert srv.subscriber_count() == 1, "ready before HA had registered the subscription"

        def probes() -> list[dict]:
            return [e["event"] for e in ing.read_all("ha")
                    if e["event"].get("event_type") == "ha_ingestor_probe"]
        wait_until(lambda: probes(), 30, "the event fired right after readiness in the queue")
        assert probes() == [fired]
        stop_collector(ing, proc)
    finally:
        srv.stop()


def test_burst_of_50000_coalesced_events(ingestor, server):
    # the pong comes behind the burst's frames: a 2 s timeout can expire on a loaded machine
    ing, proc = start_collector(ingestor, server, ping_interval="10s", ping_timeout="10s")
    client = server.clients[0]
    assert client.coalesce, "the collector did not ask for coalesce_messages"
    first = len(server.fired_states)
    started = time.monotonic()
    server.burst(50_000)
    envelopes = wait_for_keys(ing, set(server.fired_states[first:]), timeout=120)
    elapsed = time.monotonic() - started
    live = state_changes(envelopes, "live")
    assert len(live) == 50_000 and len({state_key(e) for e in live}) == 50_000
    samples = scrape(metrics_port(ing))
    assert metric(samples, "ha_ingestor_events_dropped_total", source="ha",
                  reason="drop_newest") == 0
    assert metric(samples, "ha_ingestor_reconnects_total", component="ha") == 0
    assert metric(samples, "ha_ingestor_events_received_total", source="ha") == 50_000
    assert metric(samples, "ha_ingestor_events_committed_total", source="ha") == len(envelopes)
    print(f"50 000 events committed in {elapsed:.1f} s")
    stop_collector(ing, proc)


def test_malformed_frames_and_unknown_types_are_counted_not_fatal(ingestor, server):
    ing, proc = start_collector(ingestor, server)
    server.send_raw("{this is not json")
    server.send_raw("\xff\xfe garbage")
    server.send_message({"type": "mystery", "id": 99})
    server.send_raw("[1, 2]")                          # an array frame of non-objects
    server.send_message({"type": "event", "id": 4242, "event": {"event_type": "x"}})
    server.send_message({"type": "result", "id": 777, "success": True, "result": None})
    event = server.set_state("sensor.after_garbage", "42", {"unit_of_measurement": "W"})
    envelopes = wait_for_keys(ing, {("sensor.after_garbage", event["time_fired"])})
    live = [e for e in state_changes(envelopes, "live")
            if e["event"]["data"]["entity_id"] == "sensor.after_garbage"]
    assert live[0]["event"] == event                   # stored exactly as received
    samples = scrape(metrics_port(ing))
    invalid = {kind: metric(samples, "ha_ingestor_invalid_frames_total", source="ha", kind=kind)
               for kind in ("malformed_json", "unknown_type", "not_an_object", "bad_event",
                            "unexpected_result")}
    assert invalid == {"malformed_json": 2, "unknown_type": 1, "not_an_object": 2,
                       "bad_event": 1, "unexpected_result": 1}
    assert server.stats["connections"] == 1            # never reconnected over it
    stop_collector(ing, proc)


def test_other_event_types_and_subscription_list(ingestor, server):
    ing, proc = start_collector(ingestor, server, event_types=["state_changed", "call_service"])
    assert sorted(server.clients[0].subscriptions.values()) == ["call_service", "state_changed"]
    call = server.fire_event("call_service", {"domain": "light", "service": "turn_on"})
    server.fire_event("automation_triggered", {"name": "not subscribed"})
    state = server.set_state("light.kitchen", "on")
    envelopes = wait_for_keys(ing, {("light.kitchen", state["time_fired"])})
    live = [e["event"] for e in envelopes if e["kind"] == "live"]
    assert [e["event_type"] for e in live] == ["call_service", "state_changed"]
    assert live[0] == call
    stop_collector(ing, proc)


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest"])
def test_queue_full_drops_by_policy_counts_and_keeps_running(ingestor, server, policy):
    ing, proc = start_collector(ingestor, server, handoff_max_events=1000, full_policy=policy)
    ing.write_config({"queue": {"max_bytes": "2MiB"}})
    stop_collector(ing, proc)
    proc = ing.start("collect", "ha", log="ha")
    server.wait_for_subscribers(1)
    server.set_rate(1000)        # the queue holds a few hundred events; HA cannot be paused
    port = metrics_port(ing)
    wait_until(lambda: metric(scrape(port), "ha_ingestor_events_dropped_total", source="ha",
                              reason=policy) > 0, 30, "drops counted")
    server.set_rate(0)
    samples = scrape(port)
    assert metric(samples, "ha_ingestor_queue_full", source="ha") == 1
    received = metric(samples, "ha_ingestor_events_received_total", source="ha")
    dropped = metric(samples, "ha_ingestor_events_dropped_total", source="ha",
                     reason=policy)
    assert proc.poll() is None, "the collector must not exit (or crash-loop) on a full queue"
    wait_until(lambda: "while the queue was full" in ing.log_path("ha").read_text(), 10,
               "the drops in the log")
    assert "queue is full" in ing.log_path("ha").read_text()
    # Every received event is either held in memory, committed, or counted as dropped.
    committed = metric(samples, "ha_ingestor_events_committed_total", source="ha")
    assert dropped <= received and committed + dropped <= received + 100
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0


def test_without_recorder_the_gap_is_logged_once_and_counted(ingestor):
    srv = HATestServer(token="t", recorder=False).start()
    try:
        ing, proc = start_collector(ingestor, srv)
        srv.set_state("sensor.a", "1")
        time.sleep(1)
        for gaps in (1, 2):      # each reconnect's backfill attempt, before the next drop
            srv.drop_connections()
            wait_until(lambda: metric(scrape(metrics_port(ing)),
                                      "ha_ingestor_ha_unfillable_gaps_total") >= gaps, 30,
                       f"unfillable gap {gaps} counted")
        time.sleep(1)
        samples = scrape(metrics_port(ing))
        assert metric(samples, "ha_ingestor_ha_unfillable_gaps_total") == 2
        log_text = ing.log_path("ha").read_text()
        assert log_text.count("has no history/recorder integration") == 1
        stop_collector(ing, proc)
    finally:
        srv.stop()


def test_without_state_changed_in_event_types_nothing_state_like_is_stored(ingestor, server):
    ing, proc = start_collector(ingestor, server, event_types=["call_service"])
    server.set_state("light.kitchen", "on")
    call = server.fire_event("call_service", {"domain": "light", "service": "turn_off"})
    wait_until(lambda: len(ing.read_all("ha")) >= 1, 30, "the call_service event")
    time.sleep(0.5)
    assert [e["event"] for e in ing.read_all("ha")] == [call]   # no resync, no backfill
    stop_collector(ing, proc)
