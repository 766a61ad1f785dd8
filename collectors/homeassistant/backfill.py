"""Backfill: the state changes HA fired while the collector was away, read back from HA's recorder.

``history/history_during_period`` answers in HA's compressed form (recorder, schema 41+)::

    {"<entity_id>": [{"s": state, "a": attributes, "lu": last_updated, "lc": last_changed}, ...]}

``lu``/``lc`` are epoch seconds (floats) of ``State.last_updated``/``last_changed`` as the recorder
stored them (``lc`` only when it differs). With ``no_attributes: false`` every row carries ``a``,
the full attributes as recorded, not only when they changed (``row_to_compressed_state`` in HA's
recorder). A ``state_changed`` event's ``time_fired`` *is* its ``new_state.last_updated``, and
``datetime.fromtimestamp(lu, UTC).isoformat()`` rounds ``lu`` to the microsecond exactly as HA
formats the live event's times, so it reproduces that ``time_fired`` string character for
character: a backfilled change becomes the same InfluxDB point the live event would have made.

What ``lu`` holds depends on the release. HA 2024.3 kept times as microsecond datetimes, so ``lu``
was the microsecond exactly; since 2024.7 HA keeps the ``time.time()`` float and the recorder
stores it whole (2025.4.4: ``lu`` 1796043029.3709188 for a live ``...:29.370919``). A change is
therefore compared with the watermarks at the microsecond of its ISO time, never by the raw float
(up to half a microsecond off the committed time it stands for, and later for about half of
the changes: those were stored twice before).

Query options, from HA's recorder code: ``include_start_time_state: false`` (otherwise HA adds a
synthetic state per entity stamped with ``start_time``, a point that never happened),
``significant_changes_only: false`` (attribute-only changes too), ``no_attributes: false``,
``minimal_response: false``. The recorder's filter is ``start < last_updated < end`` (both strict),
so consecutive windows overlap by one microsecond. The recorder omits the attributes an
integration marks unrecorded (e.g. ``min``/``max``/``step``/``mode`` of ``input_number``), and it
keeps no context.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from ha_ingestor.envelope import KIND_BACKFILL, state_as_event

from collectors.homeassistant.committer import Watermarks, epoch

log = logging.getLogger(__name__)

WINDOW_S = 3600.0          # one history request per hour of gap keeps every answer small
ONE_MICROSECOND = timedelta(microseconds=1)

Request = Callable[[dict, float], Any]


def iso_from_epoch(stamp: float) -> str:
    """HA's own formatting of a recorder timestamp (``dt_util.utc_from_timestamp().isoformat()``)."""
    return datetime.fromtimestamp(stamp, tz=timezone.utc).isoformat()


def compressed_to_state(entity_id: str, row: dict) -> dict:
    """A compressed history row as the HA state object it was recorded from."""
    last_updated = iso_from_epoch(row["lu"])
    last_changed = iso_from_epoch(row["lc"]) if row.get("lc") else last_updated
    return {"entity_id": entity_id, "state": row.get("s"), "attributes": row.get("a") or {},
            "last_changed": last_changed, "last_updated": last_updated}


def history_windows(start: datetime, end: datetime) -> list[tuple[datetime, datetime | None]]:
    """[start, end] split into WINDOW_S pieces; the last one is open-ended (up to "now")."""
    windows: list[tuple[datetime, datetime | None]] = []
    cursor = start
    while end - cursor > timedelta(seconds=WINDOW_S):
        window_end = cursor + timedelta(seconds=WINDOW_S)
        windows.append((cursor, window_end))
        cursor = window_end - ONE_MICROSECOND      # the recorder's bounds are both strict
    windows.append((cursor, None))
    return windows


class Backfill:
    """One reconnect's backfill. ``run_pass()`` may be called more than once (a later pass covers
    the recorder's commit interval); ``seen`` makes each change come out once per connection."""

    def __init__(self, request: Request, marks: Watermarks, margin: float, timeout: float):
        self.request = request
        self.marks = marks
        self.margin = margin
        self.timeout = timeout
        self.seen: set[tuple[str, str]] = set()     # (entity_id, time_fired) live or backfilled
        self.stored = 0

    def start_time(self) -> datetime | None:
        if not self.marks.newest:
            return None
        return datetime.fromisoformat(self.marks.newest) - timedelta(seconds=self.margin)

    def run_pass(self, entity_ids: list[str], store: Callable[[list[dict]], None]) -> int:
        """Hand ``store`` the envelopes (kind ``backfill``) of the changes not committed or seen
        yet, one history window at a time (a long outage never sits in memory whole). Returns how
        many. Raises CommandError/TransientError from the request."""
        start = self.start_time()
        if start is None or not entity_ids:
            return 0
        count = 0
        for window_start, window_end in history_windows(start, datetime.now(timezone.utc)):
            answer = self.request(self._query(entity_ids, window_start, window_end), self.timeout)
            envelopes = self._new_changes(answer or {})
            if envelopes:
                store(envelopes)
                count += len(envelopes)
        self.stored += count
        return count

    @staticmethod
    def _query(entity_ids: list[str], start: datetime, end: datetime | None) -> dict:
        query = {"type": "history/history_during_period", "start_time": start.isoformat(),
                 "entity_ids": entity_ids, "include_start_time_state": False,
                 "significant_changes_only": False, "no_attributes": False,
                 "minimal_response": False}
        if end is not None:
            query["end_time"] = end.isoformat()
        return query

    def _new_changes(self, answer: dict) -> list[dict]:
        envelopes = []
        for entity_id, rows in answer.items():
            committed_up_to = self.marks.entities.get(entity_id, 0.0)
            for row in rows if isinstance(rows, list) else ():
                if not isinstance(row, dict) or not isinstance(row.get("lu"), (int, float)):
                    continue
                state = compressed_to_state(entity_id, row)
                if epoch(state["last_updated"]) <= committed_up_to:
                    continue
                key = (entity_id, state["last_updated"])
                if key in self.seen:
                    continue
                self.seen.add(key)
                envelopes.append(state_as_event(state, KIND_BACKFILL))
        return envelopes

    def gap_seconds(self) -> float | None:
        if not self.marks.newest:
            return None
        return max(0.0, time.time() - epoch(self.marks.newest))
