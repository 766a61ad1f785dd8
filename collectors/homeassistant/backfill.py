"""Backfill: state changes read back from HA's recorder (missed while disconnected, or dropped
while the queue was full), handed on in chunks.

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
therefore compared with the watermarks at the microsecond of its ISO time (HA's UTC time strings
sort in time order), never by the raw float (up to half a microsecond off the committed time it
stands for, and later for about half of the changes: those were stored twice before).

Query options, from HA's recorder code: ``include_start_time_state: false`` (otherwise HA adds a
synthetic state per entity stamped with ``start_time``, a point that never happened),
``significant_changes_only: false`` (attribute-only changes too), ``no_attributes: false``,
``minimal_response: false``. The recorder's filter is ``start < last_updated < end`` (both strict),
so consecutive windows overlap by one microsecond. The recorder omits the attributes an
integration marks unrecorded (e.g. ``min``/``max``/``step``/``mode`` of ``input_number``), and it
keeps no context.

Memory stays bounded whatever the gap: one answer at a time, for at most ``GROUP_ENTITIES``
entities (so an answer never holds more than those entities' changes in one window, however dense
the rest of the recorder is), over a window whose length follows the density of the previous
answer towards ``ROWS_PER_REQUEST`` changes; the changes go on in chunks that wait for room in the
hand-off.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

from ha_ingestor.envelope import KIND_BACKFILL, state_as_event

from collectors.homeassistant.ledger import LiveLedger

ROWS_PER_REQUEST = 5000            # the answer a window should hold (about 1 MB of JSON)
GROUP_ENTITIES = 100               # entities per request
FIRST_WINDOW_S = 60.0
MIN_WINDOW_S = 1.0
MAX_WINDOW_S = 3600.0
MAX_GROWTH = 4.0                   # a quiet window grows the next one at most this much
ONE_MICROSECOND = timedelta(microseconds=1)

Request = Callable[[dict, float], Any]
Store = Callable[[list[dict]], None]


def iso_from_epoch(stamp: float) -> str:
    """HA's own formatting of a recorder timestamp (``dt_util.utc_from_timestamp().isoformat()``)."""
    return datetime.fromtimestamp(stamp, tz=timezone.utc).isoformat()


def committed_after(entity_marks: dict[str, float]) -> dict[str, str]:
    """Per-entity watermarks (epoch seconds of committed ``time_fired`` strings) as those strings
    again, for ``Plan.after``: a recorded change is compared with them at the microsecond."""
    return {entity_id: iso_from_epoch(stamp) for entity_id, stamp in entity_marks.items()}


def iso_before(iso_time: str) -> str:
    """The time one microsecond before ``iso_time``, in the same format."""
    return (datetime.fromisoformat(iso_time) - ONE_MICROSECOND).isoformat()


def compressed_to_state(entity_id: str, row: dict) -> dict:
    """A compressed history row as the HA state object it was recorded from."""
    last_updated = iso_from_epoch(row["lu"])
    last_changed = iso_from_epoch(row["lc"]) if row.get("lc") else last_updated
    return {"entity_id": entity_id, "state": row.get("s"), "attributes": row.get("a") or {},
            "last_changed": last_changed, "last_updated": last_updated}


def next_window(window: float, rows: int) -> float:
    """The next window's length (s), so that it holds about ROWS_PER_REQUEST changes."""
    scaled = window * ROWS_PER_REQUEST / max(rows, 1)
    return min(MAX_WINDOW_S, max(MIN_WINDOW_S, min(scaled, window * MAX_GROWTH)))


@dataclass
class Plan:
    """One pass: the recorder's state changes of ``entity_ids`` fired after ``start``.

    An entity's changes at or before ``after[entity_id]`` (HA's time strings, which sort in time
    order) are skipped: already committed, or older than the drops being restored. Changes stored
    at or after ``remember_from`` are remembered as seen, so a later pass over the same time does
    not store them again."""

    start: datetime
    entity_ids: list[str]
    after: dict[str, str] = field(default_factory=dict)
    remember_from: str = ""


@dataclass
class Result:
    stored: int = 0
    restored: int = 0          # of them, dropped live changes (LiveLedger.restored)


class Backfill:
    """Runs passes for one connection; ``store`` takes chunks of at most ``chunk`` envelopes
    (kind ``backfill``) and may wait for room."""

    def __init__(self, request: Request, ledger: LiveLedger, store: Store, timeout: float,
                 chunk: int):
        self.request = request
        self.ledger = ledger
        self.store = store
        self.timeout = timeout
        self.chunk = chunk
        self.window = FIRST_WINDOW_S

    def run_pass(self, plan: Plan) -> Result:
        """Store the changes of ``plan`` not committed or seen yet: group by group of entities,
        window by window (one answer held at a time). Raises CommandError/TransientError from
        the request or the store."""
        result = Result()
        newest: dict[str, str] = {}        # per entity, the newest stored by this pass
        for first in range(0, len(plan.entity_ids), GROUP_ENTITIES):
            self._read_group(plan.entity_ids[first:first + GROUP_ENTITIES], plan, newest, result)
        return result

    def _read_group(self, entity_ids: list[str], plan: Plan, newest: dict[str, str],
                    result: Result) -> None:
        cursor = plan.start
        while True:
            end = cursor + timedelta(seconds=self.window)
            last = end >= datetime.now(timezone.utc)
            answer = self.request(self._query(entity_ids, cursor, None if last else end),
                                  self.timeout) or {}
            rows = self._store_answer(answer, plan, newest, result)
            answer = None
            if last:                                # up to now: its length says nothing
                return
            self.window = next_window(self.window, rows)
            cursor = end - ONE_MICROSECOND          # the recorder's bounds are both strict

    @staticmethod
    def _query(entity_ids: list[str], start: datetime, end: datetime | None) -> dict:
        query = {"type": "history/history_during_period", "start_time": start.isoformat(),
                 "entity_ids": entity_ids, "include_start_time_state": False,
                 "significant_changes_only": False, "no_attributes": False,
                 "minimal_response": False}
        if end is not None:
            query["end_time"] = end.isoformat()
        return query

    def _store_answer(self, answer: dict, plan: Plan, newest: dict[str, str],
                      result: Result) -> int:
        """Hand on the new changes of one answer in chunks; returns how many rows it held."""
        chunk: list[dict] = []
        remember: list[tuple[str, str]] = []
        for entity_id, state in self._new_states(answer, plan, newest, result):
            if state["last_updated"] >= plan.remember_from:
                remember.append((entity_id, state["last_updated"]))
            chunk.append(state_as_event(state, KIND_BACKFILL))
            if len(chunk) >= self.chunk:
                self._hand_on(chunk, remember, result)
                chunk, remember = [], []
        if chunk:
            self._hand_on(chunk, remember, result)
        return sum(len(rows) for rows in answer.values() if isinstance(rows, list))

    def _new_states(self, answer: dict, plan: Plan, newest: dict[str, str],
                    result: Result) -> Iterator[tuple[str, dict]]:
        """The answer's changes not committed, seen or stored by this pass yet, as HA states."""
        for entity_id, rows in answer.items():
            floor = max(plan.after.get(entity_id, ""), newest.get(entity_id, ""))
            for row in rows if isinstance(rows, list) else ():
                if not isinstance(row, dict) or not isinstance(row.get("lu"), (int, float)):
                    continue
                state = compressed_to_state(entity_id, row)
                fired = state["last_updated"]
                if fired <= floor or self.ledger.is_seen((entity_id, fired)):
                    continue
                newest[entity_id] = floor = fired
                if self.ledger.restored(entity_id, fired):
                    result.restored += 1
                yield entity_id, state

    def _hand_on(self, chunk: list[dict], remember: list[tuple[str, str]],
                 result: Result) -> None:
        self.store(chunk)
        self.ledger.remember(remember)
        result.stored += len(chunk)


def gap_seconds(newest: str | None) -> float | None:
    """Seconds since ``newest`` (an HA time string), or None."""
    if not newest:
        return None
    return max(0.0, time.time() - datetime.fromisoformat(newest).timestamp())
