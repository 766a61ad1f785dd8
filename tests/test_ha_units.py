"""The HA collector's pure parts: the recorder's compressed states back to events, history
windows, the hand-off (drop policies for live events, pacing for catch-up work) and the ledger of
accepted and dropped live events."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from collectors.homeassistant.backfill import (GROUP_ENTITIES, MAX_WINDOW_S, MIN_WINDOW_S,
                                               ROWS_PER_REQUEST, Backfill, Plan,
                                               committed_after, compressed_to_state, iso_before,
                                               iso_from_epoch, next_window)
from collectors.homeassistant.committer import Watermarks
from collectors.homeassistant.handoff import DROP_NEWEST, DROP_OLDEST, Control, Handoff
from collectors.homeassistant.ledger import LiveLedger
from ha_ingestor.envelope import ha_event, state_as_event

SAMPLES = Path(__file__).parent / "data" / "ha-samples"


def live(n: int, entity: str = "sensor.x") -> dict:
    fired = f"2026-01-01T00:00:{n:02d}+00:00"
    return ha_event({"event_type": "state_changed", "time_fired": fired,
                     "data": {"entity_id": entity}}, "live")


def catchup(n: int) -> dict:
    return state_as_event({"entity_id": "sensor.y", "state": str(n), "attributes": {},
                           "last_updated": f"2026-01-01T00:00:{n:02d}+00:00",
                           "last_changed": f"2026-01-01T00:00:{n:02d}+00:00"}, "backfill")


def numbers(items: list) -> list[int]:
    return [int(i["event"]["time_fired"][17:19]) for i in items if not isinstance(i, Control)]


def test_compressed_state_reproduces_the_live_time_fired():
    # Times as HA 2024.3.3 sent them (the ha-samples), through the recorder's float and back.
    for fired in ("2026-11-27T15:57:48.942943+00:00", "2026-11-27T15:57:48.000001+00:00",
                  "2026-11-27T15:57:48+00:00", "2026-11-27T23:59:59.999999+00:00"):
        lu = datetime.fromisoformat(fired).timestamp()
        stored = json.loads(json.dumps({"lu": lu}))["lu"]   # what HA's JSON carries
        state = compressed_to_state("input_boolean.x", {"s": "on", "a": {"k": 1}, "lu": stored})
        assert state["last_updated"] == state["last_changed"] == fired
        assert state_as_event(state, "backfill")["event"]["time_fired"] == fired


@pytest.mark.parametrize("version", ["2024.3.3", "2025.4.4"])
def test_backfill_skips_what_was_committed_whatever_float_the_recorder_kept(version):
    """Real answers: ten live changes and the recorder's rows for them. 2024.3.3's ``lu`` is the
    microsecond exactly; 2025.4.4's is HA's ``time.time()`` float, for some rows above the
    microsecond the live ``time_fired`` shows. Committed live, none may come back as backfill."""
    folder = SAMPLES if version == "2024.3.3" else SAMPLES / version
    sample = json.loads((folder / "history_live_time_fired.json").read_text())
    answer = json.loads((folder / "result_history_during_period.json").read_text())["result"]
    entity_id, fired = sample["entity_id"], sample["time_fired"]
    rows = answer[entity_id]
    above = [row["lu"] > datetime.fromisoformat(t).timestamp() for row, t in zip(rows, fired)]
    assert any(above) == (version != "2024.3.3")
    assert [compressed_to_state(entity_id, row)["last_updated"] for row in rows] == fired

    marks = Watermarks()
    marks.observe([{"event": {"event_type": "state_changed", "time_fired": t,
                              "data": {"entity_id": entity_id}}} for t in fired])
    assert backfilled(answer, entity_id, marks) == []

    marks.entities[entity_id] = datetime.fromisoformat(fired[4]).timestamp()   # 5 committed
    assert backfilled(answer, entity_id, marks) == fired[5:]


def backfilled(answer: dict, entity_id: str, marks: Watermarks) -> list[str]:
    """The time_fired of what one pass over ``answer`` stores, after the committed ``marks``."""
    stored: list[dict] = []
    backfill = Backfill(lambda _query, _timeout: answer, LiveLedger(), stored.extend,
                        timeout=1.0, chunk=100)
    plan = Plan(datetime.now(timezone.utc) - timedelta(seconds=1), [entity_id],   # one request
                after=committed_after(marks.entities))
    assert backfill.run_pass(plan).stored == len(stored)
    return [e["event"]["time_fired"] for e in stored]


def test_compressed_state_keeps_last_changed_when_it_differs():
    state = compressed_to_state("automation.a", {"s": "on", "a": {}, "lu": 1795795068.944405,
                                                 "lc": 1795795062.749332})
    assert state["last_updated"].endswith("48.944405+00:00")
    assert state["last_changed"].endswith("42.749332+00:00")


def test_history_windows_adapt_to_the_density_of_the_last_one():
    assert next_window(60, ROWS_PER_REQUEST * 2) == 30             # too dense: halve it
    assert next_window(60, 0) == 240                                # empty: grow, but at most 4x
    assert next_window(3000, 10) == MAX_WINDOW_S
    assert next_window(2, ROWS_PER_REQUEST * 100) == MIN_WINDOW_S


def test_one_microsecond_before_keeps_the_format():
    assert iso_before("2026-01-01T00:00:01+00:00") == "2026-01-01T00:00:00.999999+00:00"
    assert iso_before("2026-01-01T00:00:01.000001+00:00") == "2026-01-01T00:00:01+00:00"


def canned_recorder(changes: dict[str, list[float]]):
    """history/history_during_period over ``changes`` (entity -> lu), HA's filters and format."""
    queries: list[dict] = []

    def request(query: dict, _timeout: float) -> dict:
        queries.append(query)
        start = datetime.fromisoformat(query["start_time"]).timestamp()
        end = datetime.fromisoformat(query["end_time"]).timestamp() \
            if "end_time" in query else float("inf")
        return {e: [{"s": "1", "a": {"unit_of_measurement": "W"}, "lu": lu}
                    for lu in changes[e] if start < lu < end] for e in query["entity_ids"]}
    return request, queries


def test_a_pass_stores_each_new_change_once_and_counts_the_dropped_ones():
    now = time.time()
    changes = {f"sensor.e{n:03d}": [now - 3000 + k * 100 + n / 1000 for k in range(25)]
               for n in range(150)}
    request, queries = canned_recorder(changes)
    ledger, chunks = LiveLedger(), []
    ledger.track([])
    seen = ("sensor.e001", iso_from_epoch(changes["sensor.e001"][3]))
    ledger.remember([seen])                                        # received live: not again
    dropped = [ha_event({"event_type": "state_changed", "time_fired": iso_from_epoch(lu),
                         "data": {"entity_id": "sensor.e002"}}, "live")
               for lu in changes["sensor.e002"][5:]]
    ledger.dropped_events(dropped, queue_full=True)                # 20 to restore
    backfill = Backfill(request, ledger, chunks.append, 10, chunk=100)
    plan = Plan(datetime.now(timezone.utc) - timedelta(hours=1), sorted(changes),
                after={"sensor.e000": iso_from_epoch(changes["sensor.e000"][9])},   # committed
                remember_from=iso_from_epoch(now - 1000))
    result = backfill.run_pass(plan)
    stored = [(e["event"]["data"]["entity_id"], e["event"]["time_fired"]) for c in chunks
              for e in c]
    assert result.stored == len(stored) == len(set(stored)) == 150 * 25 - 10 - 1
    assert seen not in stored and ("sensor.e000", iso_from_epoch(changes["sensor.e000"][9])) \
        not in stored
    assert result.restored == 20 and not ledger.has_pending()
    assert max(len(c) for c in chunks) == 100 and all(e["kind"] == "backfill" for c in chunks
                                                        for e in c)
    assert max(len(q["entity_ids"]) for q in queries) == GROUP_ENTITIES
    assert ledger.is_seen(("sensor.e003", iso_from_epoch(changes["sensor.e003"][24])))
    assert not ledger.is_seen(("sensor.e003", iso_from_epoch(changes["sensor.e003"][0])))


def test_watermarks_follow_the_newest_state_change_per_entity():
    marks = Watermarks()
    events = [{"event": {"event_type": "state_changed", "time_fired": t,
                         "data": {"entity_id": e}}}
              for e, t in (("a.x", "2026-01-01T00:00:01.5+00:00"),
                           ("a.x", "2026-01-01T00:00:01+00:00"),
                           ("b.y", "2026-01-01T00:00:02.000001+00:00"))]
    events.append({"event": {"event_type": "call_service", "time_fired": "2027-01-01T00:00:00+00:00",
                             "data": {}}})
    marks.observe(events)
    assert marks.newest == "2026-01-01T00:00:02.000001+00:00"
    assert marks.entities["a.x"] == datetime.fromisoformat("2026-01-01T00:00:01.5+00:00").timestamp()


def test_handoff_drop_newest_keeps_the_oldest():
    handoff = Handoff(3, DROP_NEWEST)
    assert handoff.put_live([live(1), live(2)]) == []
    assert numbers(handoff.put_live([live(3), live(4), live(5)])) == [4, 5]
    assert numbers(handoff.take(10, 0)) == [1, 2, 3] and handoff.dropped == 2


def test_handoff_drop_oldest_keeps_the_newest_and_every_marker():
    handoff = Handoff(3, DROP_OLDEST)
    handoff.put_live([live(1), live(2)])
    handoff.put_control(lambda: None)
    assert numbers(handoff.put_live([live(3), live(4), live(5)])) == [1, 2]
    items = handoff.take(10, 0)
    assert numbers(items) == [3, 4, 5] and isinstance(items[0], Control)


def test_catch_up_work_never_takes_room_from_live_events():
    handoff = Handoff(2, DROP_OLDEST, catchup_max=3)
    assert handoff.put_catchup([catchup(1), catchup(2), catchup(3)], 0)
    assert not handoff.put_catchup([catchup(4)], 0.01)     # paced: waits for its own room
    assert handoff.put_live([live(5), live(6)]) == []      # live events keep all of theirs
    assert numbers(handoff.put_live([live(7)])) == [5]     # drop_oldest evicts live ones only
    assert numbers(handoff.take(2, 0)) == [1, 2]
    assert handoff.put_catchup([catchup(8), catchup(9)], 0)
    assert numbers(handoff.take(10, 0)) == [3, 6, 7, 8, 9]


def test_a_large_catch_up_chunk_goes_in_alone():
    handoff = Handoff(2, catchup_max=2)
    assert handoff.put_catchup([catchup(n) for n in range(5)], 0)
    assert not handoff.put_catchup([catchup(6)], 0)
    handoff.take(10, 0)
    assert handoff.put_catchup([catchup(6)], 0)


def test_a_dropped_state_change_is_not_seen_and_waits_for_a_pass():
    ledger = LiveLedger()
    ledger.track([])
    accepted = [live(1, "sensor.a"), live(2, "sensor.a"), live(3, "sensor.b")]
    ledger.accepted(accepted)
    call = ha_event({"event_type": "call_service", "time_fired": "2026-01-01T00:00:04+00:00",
                     "data": {}}, "live")
    assert ledger.dropped_events([accepted[1], accepted[2], call], queue_full=True) == 2
    assert ledger.is_seen(("sensor.a", accepted[0]["event"]["time_fired"]))
    assert not ledger.is_seen(("sensor.a", accepted[1]["event"]["time_fired"]))
    pending = ledger.pending()
    assert ledger.state_drops == 2 and {e: (p.earliest[17:19], p.count)
                                         for e, p in pending.items()} == \
        {"sensor.a": ("02", 1), "sensor.b": ("03", 1)}
    assert not ledger.restored("sensor.a", accepted[0]["event"]["time_fired"])    # older
    assert ledger.restored("sensor.a", accepted[1]["event"]["time_fired"])
    assert list(ledger.give_up(float("inf"))) == ["sensor.b"] and not ledger.has_pending()
    report = ledger.take_report()
    text = report.describe("drop_newest", 3)
    assert "dropped 3 events (3 in total)" in text and "while the queue was full (3)" in text
    assert "2 state changes will be restored" in text
    assert "1 other events fired from 2026-01-01T00:00:04+00:00" in text and "call_service 1" \
        in text
    assert ledger.take_report() is None


def test_seen_is_kept_only_while_a_catch_up_or_restore_needs_it():
    ledger = LiveLedger()
    ledger.accepted([live(1)])
    assert not ledger.is_seen(("sensor.x", live(1)["event"]["time_fired"]))   # steady state
    ledger.track([live(2)])                          # what waits in the hand-off, then new ones
    ledger.accepted([live(3)])
    assert all(ledger.is_seen(("sensor.x", live(n)["event"]["time_fired"])) for n in (2, 3))
    ledger.dropped_events([live(4)], queue_full=True)
    ledger.stop_tracking()                           # a drop is pending: still needed
    assert ledger.tracking and ledger.seen_count() == 2
    ledger.give_up(float("inf"))
    ledger.stop_tracking()
    assert not ledger.tracking and ledger.seen_count() == 0
