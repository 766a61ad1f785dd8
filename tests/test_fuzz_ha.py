"""Property-based: any Home Assistant event, through the real pipeline, lands as documented or is
a dead letter with a reason; no process exits.

- ``state_changed``: hypothesis draws states (any text up to HA's 255 characters, numbers, on/off,
  NaN/inf texts) and attributes (any names: separators, quotes, backslashes, ``time``, empty,
  control characters, newlines; values of every JSON type; units of measurement such as
  ``#/min`` or ``a\\``). A real HA 2024.3.3 sets them (``POST /api/states/<entity_id>``) and fires
  the state changes.
- Other events: hypothesis draws event types and data (any JSON object, ``service_data`` with an
  alarm code) and a real HA fires them (WebSocket ``fire_event``).
- Frames a real HA cannot send (its JSON encoder refuses lone surrogates and integers beyond 64
  bits, writes no NaN, nests at most 254 levels) come from the project's protocol-faithful HA test
  server instead: the same draws with lone surrogates, plus NaN/Infinity, huge integers and deep
  nesting.

``collect ha`` → queue → ``write`` → InfluxDB 1.6.7; the reference for each event is the event as
HA's bus delivered it to a subscription of our own (real HA) or as the test server sent it, judged
against docs/schema.md (``tests.support.schema_oracle``).
"""

from __future__ import annotations

import http.client
import json
import re
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import strategies as st

from ha_ingestor import queue
from tests.support.fixtures_homeassistant import collector_overrides
from tests.support.fuzz import Judge, draw, field_type_conflict, fuzz_examples, fuzz_seed
from tests.support.fuzz_strategies import attributes, event_data, nested, states
from tests.support.influx_readback import read_points
from tests.support.procs import stop_process, tail, wait_until
from tests.support.real_ha import EventRecorder
from tests.support.schema_oracle import Dead, event_point, state_changed_point

pytestmark = [pytest.mark.fuzz, pytest.mark.slow]

DB = "fuzz"


def pipeline(ingestor, influxdb, url: str, token: str):
    influxdb.create_database(DB)
    ing = ingestor({**collector_overrides(url, token),
                    "influxdb": {"api": "v1", "url": influxdb.url, "database": DB,
                                 "batch_size": 5000, "flush_interval": "200ms"}})
    return ing, [ing.start("collect", "ha", log="ha"), ing.start("write", log="writer")]


def finish(ing, procs, judge: Judge, examples: int) -> None:
    for proc in procs:                  # no process exited, and each stops cleanly
        assert proc.poll() is None, tail(ing.log_path("writer")) + tail(ing.log_path("ha"))
        assert stop_process(proc, timeout=30) == 0
    judge.finish(examples)
    assert judge.counts.get("landed as documented", 0) > examples // 5   # not vacuous


def wait_for_event_type(influxdb, event_type: str, timeout: float = 300) -> None:
    """The last event is in InfluxDB: every event before it is written or a dead letter."""
    query = f"""SELECT count("fired") FROM "ha_events" WHERE "event_type" = '{event_type}'"""
    wait_until(lambda: bool(influxdb.query(query, DB)), timeout, f"{event_type} in InfluxDB",
               interval=0.5)


def dead_letters(queue_dir) -> list:
    return queue.list_dead(queue_dir, "ha")


def judge_all(judge, examples, expected, points_for, dead_for) -> None:
    for i, example in enumerate(examples):
        judge.check(i, example, expected[i], points_for(i), dead_for(i),
                    lambda i=i: field_type_conflict(expected, i))


# ---- state_changed through a real HA ------------------------------------------------------------

def rest_states(ha, method: str, entity_states: list[tuple[str, str, dict]]) -> list[int]:
    """POST (or DELETE) every state over HA's REST API, four keep-alive connections; returns
    HA's HTTP status per state."""
    local = threading.local()

    def call(item) -> int:
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection("127.0.0.1", ha.port, timeout=60)
        entity_id, state, attrs = item
        body = json.dumps({"state": state, "attributes": attrs}) if method == "POST" else None
        local.conn.request(method, f"/api/states/{entity_id}", body=body,
                           headers={"Authorization": f"Bearer {ha.token}",
                                    "Content-Type": "application/json"})
        response = local.conn.getresponse()
        response.read()
        return response.status
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(call, entity_states))


@pytest.mark.realha
def test_any_state_change_lands_as_documented_or_is_a_dead_letter(real_ha, influxdb, ingestor,
                                                                 tmp_path):
    at_seed, count = fuzz_seed(), fuzz_examples()
    drawn = draw(st.tuples(states(), attributes()), count, at_seed)
    named = [("5", {"unit_of_measurement": "#/min"}), ("1", {"unit_of_measurement": "a\\"}),
             ("on", {"time": 1700000000, "k\\": 1, "": 2, "value": 3, "v": "two\nlines"})]
    examples = named + drawn
    run = secrets.token_hex(3).replace("0", "a")
    entity_ids = [f"sensor.fz{run}_{i}" for i in range(len(examples))]
    ing, procs = pipeline(ingestor, influxdb, real_ha.ws_url, real_ha.token)
    ing.wait_caught_up()     # each example once: a state set earlier would be in the resync too
    recorder = EventRecorder(real_ha)
    posted = [(e, s, a) for e, (s, a) in zip(entity_ids, examples)]
    try:
        statuses = rest_states(real_ha, "POST", posted)
        end = f"fz{run}_end"
        with real_ha.client() as client:
            client.command({"type": "fire_event", "event_type": end})
        wait_for_event_type(influxdb, end)
    finally:
        seen = recorder.stop()
        rest_states(real_ha, "DELETE", posted)   # the HA of this test run is shared: leave it as found
    fired = {e["data"]["entity_id"]: e for e in seen if e["event_type"] == "state_changed"}

    judge = Judge("ha_state_changed", tmp_path, at_seed)
    expected = []
    for i, entity_id in enumerate(entity_ids):
        if statuses[i] >= 400:
            judge.count("refused by HA's REST API (state too long, ...)")
            expected.append(None)
        elif entity_id not in fired:
            judge.failures.append({"index": i, "problem": "HA fired no state_changed",
                                   "example": repr(examples[i])})
            expected.append(None)
        else:
            expected.append(state_changed_point(fired[entity_id]))
    points = read_points(influxdb, DB)
    by_object: dict[str, list] = {}
    for (measurement, tags, _time), fields in points.items():
        by_object.setdefault(dict(tags).get("entity_id"), []).append(
            (measurement, dict(tags), fields))
    dead: dict[str, list[str]] = {}
    for letter in dead_letters(ing.queue_dir):
        entity = ((letter.event.get("event") or {}).get("data") or {}).get("entity_id")
        dead.setdefault(entity, []).append(letter.reason)
    for i, entity_id in enumerate(entity_ids):
        if expected[i] is not None:
            judge.check(i, {"state": examples[i][0], "attributes": examples[i][1]}, expected[i],
                        by_object.get(entity_id.split(".", 1)[1], []),
                        dead.get(entity_id, []), lambda i=i: field_type_conflict(expected, i))
    finish(ing, procs, judge, len(examples))


# ---- other events through a real HA -------------------------------------------------------------

@pytest.mark.realha
def test_any_other_event_lands_as_documented_or_is_a_dead_letter(real_ha, influxdb, ingestor,
                                                                tmp_path):
    at_seed, count = fuzz_seed(), fuzz_examples()
    suffix = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=12)
    drawn = draw(st.tuples(suffix, event_data()), count, at_seed)
    named = [("alarm", {"domain": "alarm_control_panel", "service": "alarm_disarm",
                        "service_data": {"entity_id": "alarm_control_panel.home",
                                         "code": "1234"}}),
             ("end\\", {"time": 5, "a\\": {"b": 1}})]
    examples = named + drawn
    run = secrets.token_hex(3)
    types = [f"fz{run}_{i}_{suffix}"[:64] for i, (suffix, _) in enumerate(examples)]
    ing, procs = pipeline(ingestor, influxdb, real_ha.ws_url, real_ha.token)
    wait_until(lambda: ing.ready("ha"), 60, "the collector connected")
    recorder = EventRecorder(real_ha)
    try:
        with real_ha.client() as client:
            pending = []
            for event_type, (_, data) in zip(types, examples):
                pending.append(client.send({"type": "fire_event", "event_type": event_type,
                                            "event_data": data}))
                if len(pending) >= 32:
                    client.result(pending.pop(0), timeout=60)
            for msg_id in pending:
                client.result(msg_id, timeout=60)
            client.command({"type": "fire_event", "event_type": f"fz{run}_end"})
        wait_for_event_type(influxdb, f"fz{run}_end")
    finally:
        seen = recorder.stop()
    fired = {e["event_type"]: e for e in seen}

    judge = Judge("ha_events", tmp_path, at_seed)
    expected = [event_point(fired[t]) if t in fired else None for t in types]
    for i, t in enumerate(types):
        if t not in fired:
            judge.failures.append({"index": i, "problem": "HA fired no event",
                                   "example": repr(examples[i])})
    points, dead = events_found(read_points(influxdb, DB), dead_letters(ing.queue_dir), run)
    for i in range(len(examples)):
        if expected[i] is not None:
            judge.check(i, examples[i], expected[i], points.get(i, []), dead.get(i, []),
                        lambda i=i: field_type_conflict(expected, i))
    stored_codes = [f for (_m, _t, fields) in points.get(0, []) for f in fields if "code" in f]
    assert not stored_codes, stored_codes          # the alarm code of example 0 is not written
    finish(ing, procs, judge, len(examples))


def events_found(points: dict, letters: list, run: str) -> tuple[dict, dict]:
    """Points and dead letters of the examples, by index (from the ``fz<run>_<i>_`` type)."""
    def index(event_type) -> int | None:
        parts = str(event_type).split("_", 2)
        if len(parts) > 1 and parts[0] == f"fz{run}" and parts[1].isdigit():
            return int(parts[1])
        return None
    found: dict[int, list] = {}
    for (measurement, tags, _time), fields in points.items():
        i = index(dict(tags).get("event_type"))
        if i is not None:
            found.setdefault(i, []).append((measurement, dict(tags), fields))
    dead: dict[int, list[str]] = {}
    for letter in letters:
        event = letter.event.get("event") or {}
        i = index(event.get("event_type"))
        if i is None and "frame" in letter.event:       # an unreadable frame, kept whole
            match = re.search(f'"fz{run}_([0-9]+)_', letter.event["frame"])
            i = int(match.group(1)) if match else None
        if i is not None:
            dead.setdefault(i, []).append(letter.reason)
    return found, dead


# ---- frames a real HA cannot send: the HA test server -------------------------------------------

def test_frames_no_real_ha_sends_land_as_documented_or_are_dead_letters(
        ha_test_server, influxdb, ingestor, tmp_path):
    """The HA test server stands in for HA here: no real HA can be made to send these frames."""
    at_seed, count = fuzz_seed(), fuzz_examples()
    kinds = st.one_of(
        st.tuples(st.just("state"), states(surrogates=True), attributes(surrogates=True)),
        st.tuples(st.just("event"), st.text(max_size=8), event_data(surrogates=True)),
        st.tuples(st.just("raw"), st.sampled_from(tuple(RAW)), st.none()))
    drawn = draw(kinds, count, at_seed)
    examples = drawn
    run = secrets.token_hex(3)
    ing, procs = pipeline(ingestor, influxdb, ha_test_server.url, ha_test_server.token)
    ing.wait_caught_up()     # each example once: a state set earlier would be in the resync too
    expected = []
    for i, (kind, a, b) in enumerate(examples):
        if kind == "state":
            event = ha_test_server.set_state(f"sensor.fz{run}_{i}", a, b)
            expected.append(state_changed_point(event))
        elif kind == "event":
            event = ha_test_server.fire_event(f"fz{run}_{i}_{a}", b)
            expected.append(event_point(json.loads(json.dumps(event))))   # as on the wire
        else:
            expected.append(raw_event(ha_test_server, f"fz{run}_{i}_raw", a, b))
    ha_test_server.fire_event(f"fz{run}_end", {})
    wait_for_event_type(influxdb, f"fz{run}_end")

    judge = Judge("ha_test_server", tmp_path, at_seed)
    points, dead = events_found(read_points(influxdb, DB), dead_letters(ing.queue_dir), run)
    states_found, states_dead = states_by_index(read_points(influxdb, DB),
                                                dead_letters(ing.queue_dir), run)
    for i, example in enumerate(examples):
        got_points = states_found.get(i, []) if example[0] == "state" else points.get(i, [])
        got_dead = states_dead.get(i, []) if example[0] == "state" else dead.get(i, [])
        judge.check(i, example, expected[i], got_points, got_dead,
                    lambda i=i: field_type_conflict(expected, i))
    finish(ing, procs, judge, len(examples))


RAW = {   # event data as JSON text, and what becomes of it
    "nan": '{"n":NaN}',                     # not JSON: the frame is a dead letter, kept whole
    "infinity": '{"n":-Infinity}',
    "big": '{"big":' + "9" * 30 + "}",       # beyond 64 bits: a float like any number
    "huge": '{"big":' + "9" * 400 + "}",     # beyond a float: its digits as text
    "deep": nested(70),                       # deeper than schema.limits.max_depth
    "deeper": nested(3000),                   # deeper than the collector's parser goes
}


def raw_event(server, event_type: str, kind: str, _unused):
    text = RAW[kind]
    event = server.fire_event_json(event_type, text)
    if kind in ("nan", "infinity"):
        return Dead(["malformed_json"])
    if kind == "deeper":
        return Dead(["too_deep"])
    if kind == "deep":
        return Dead(["deeper than"])
    return event_point({**event, "data": json.loads(text)})


def states_by_index(points: dict, letters: list, run: str) -> tuple[dict, dict]:
    found: dict[int, list] = {}
    prefix = f"fz{run}_"
    for (measurement, tags, _time), fields in points.items():
        object_id = dict(tags).get("entity_id", "")
        if object_id.startswith(prefix) and object_id[len(prefix):].isdigit():
            found.setdefault(int(object_id[len(prefix):]), []).append(
                (measurement, dict(tags), fields))
    dead: dict[int, list[str]] = {}
    for letter in letters:
        event = letter.event.get("event") or {}
        entity = str((event.get("data") or {}).get("entity_id", ""))
        if entity.startswith(f"sensor.{prefix}") and entity.split("_")[-1].isdigit():
            dead.setdefault(int(entity.split("_")[-1]), []).append(letter.reason)
    return found, dead
