"""The HA collector's pure parts: the recorder's compressed states back to events, history
windows, and the hand-off's drop policies."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from collectors.homeassistant.backfill import Backfill, compressed_to_state, history_windows
from collectors.homeassistant.committer import Watermarks
from collectors.homeassistant.handoff import DROP_NEWEST, DROP_OLDEST, Handoff
from ha_ingestor.envelope import state_as_event

SAMPLES = Path(__file__).parent / "data" / "ha-samples"


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
    live = json.loads((folder / "history_live_time_fired.json").read_text())
    answer = json.loads((folder / "result_history_during_period.json").read_text())["result"]
    entity_id, fired = live["entity_id"], live["time_fired"]
    rows = answer[entity_id]
    above = [row["lu"] > datetime.fromisoformat(t).timestamp() for row, t in zip(rows, fired)]
    assert any(above) == (version != "2024.3.3")
    assert [compressed_to_state(entity_id, row)["last_updated"] for row in rows] == fired

    marks = Watermarks()
    marks.observe([{"event": {"event_type": "state_changed", "time_fired": t,
                              "data": {"entity_id": entity_id}}} for t in fired])
    stored: list[dict] = []
    backfill = Backfill(lambda _query, _timeout: answer, marks, margin=10.0, timeout=1.0)
    assert backfill.run_pass([entity_id], stored.extend) == 0 and stored == []

    marks.entities[entity_id] = datetime.fromisoformat(fired[4]).timestamp()   # 5 committed
    backfill = Backfill(lambda _query, _timeout: answer, marks, margin=10.0, timeout=1.0)
    backfill.run_pass([entity_id], stored.extend)
    assert [e["event"]["time_fired"] for e in stored] == fired[5:]


def test_compressed_state_keeps_last_changed_when_it_differs():
    state = compressed_to_state("automation.a", {"s": "on", "a": {}, "lu": 1795795068.944405,
                                                 "lc": 1795795062.749332})
    assert state["last_updated"].endswith("48.944405+00:00")
    assert state["last_changed"].endswith("42.749332+00:00")


def test_history_windows_overlap_by_one_microsecond():
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    windows = history_windows(start, start + timedelta(hours=2, minutes=30))
    assert len(windows) == 3 and windows[-1][1] is None
    for (_, end), (next_start, _) in zip(windows, windows[1:]):
        assert end - next_start == timedelta(microseconds=1)   # start < lu < end, both strict


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
    assert handoff.put_many([1, 2]) == 0
    assert handoff.put_many([3, 4, 5]) == 2
    assert handoff.take(10, 0) == [1, 2, 3] and handoff.dropped == 2


def test_handoff_drop_oldest_keeps_the_newest_and_every_marker():
    handoff = Handoff(3, DROP_OLDEST)
    handoff.put_many([1, 2])
    handoff.put_control(lambda: None)
    assert handoff.put_many([3, 4, 5]) == 2
    items = handoff.take(10, 0)
    assert [i for i in items if isinstance(i, int)] == [3, 4, 5] and len(items) == 4


def test_handoff_force_bypasses_the_bound():
    handoff = Handoff(2, DROP_NEWEST)
    handoff.put_many([1, 2])
    assert handoff.put_many([3, 4, 5], force=True) == 0
    assert len(handoff) == 5
