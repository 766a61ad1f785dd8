"""Catching up, after every (re)connect and after live state changes were dropped.

After a connect:

1. ``begin()``, before subscribing: the watermarks are held, and a snapshot of them is queued
   behind the previous connection's events.
2. Pass 1: the recorder's state changes since the newest committed one (minus
   ``backfill_margin``), for every entity HA has now or had before.
3. Resync: the ``get_states`` snapshot, one record per entity.
4. Pass 2, ``backfill_margin`` after subscribing: the changes the recorder had not committed yet
   at pass 1 (only the tail since ``subscribe - margin`` is read again).
5. Restore what the hand-off dropped meanwhile, then release the watermarks once all of it is
   committed ("caught up").

After drops (``restore_dropped``): once the queue has room again and the recorder has had
``backfill_margin`` to commit them, the dropped state changes are read back (only the entities
concerned, from each one's earliest drop) and counted against the drops; then the watermarks are
released. A dropped change the recorder still does not hold ``GIVE_UP_AFTER_S`` later (an entity
excluded from the recorder) is counted as lost.

Everything is handed on in chunks that wait for room in the hand-off: the catch-up never makes a
live event drop, and its memory does not grow with the gap.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from datetime import datetime, timedelta
from typing import Callable

from ha_ingestor import metrics
from ha_ingestor.config import HomeAssistantConfig
from ha_ingestor.envelope import KIND_RESYNC, state_as_event

from collectors.homeassistant.backfill import (Backfill, Plan, committed_after, gap_seconds,
                                               iso_before, iso_from_epoch)
from collectors.homeassistant.committer import Committer, Watermarks
from collectors.homeassistant.connection import CommandError
from collectors.homeassistant.handoff import Handoff
from collectors.homeassistant.ledger import LiveLedger, Pending

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 300.0       # history and get_states can be large; pings catch a frozen HA
BACKFILL_TRIES = 3
GIVE_UP_AFTER_S = 120.0         # a dropped change not in the recorder this long after: lost
MIN_RETRY_S = 1.0               # between two restore rounds
PACE_WAIT_S = 0.2


class CatchUp:
    """One connection's catch-up work, run in the collector's main thread. ``check()`` raises
    TransientError when the work must stop (stopping, connection lost) and reports drops."""

    def __init__(self, ha: HomeAssistantConfig, chunk: int, committer: Committer,
                 handoff: Handoff, ledger: LiveLedger, request: Callable,
                 check: Callable[[], None], on_no_history: Callable[[CommandError], None]):
        self.ha = ha
        self.committer = committer
        self.handoff = handoff
        self.ledger = ledger
        self.request = request
        self.check = check
        self.on_no_history = on_no_history
        self.chunk = chunk
        self.backfill = Backfill(request, ledger, self._store_backfilled, REQUEST_TIMEOUT_S,
                                 chunk)
        self.wants_states = not ha.event_types or "state_changed" in ha.event_types
        self.history = ha.backfill and self.wants_states
        self.counts = {"backfilled": 0, "restored": 0, "resync": 0}
        self._marks: Future | None = None
        self._last_round = 0.0

    # -- after a connect ------------------------------------------------------------------------
    def begin(self) -> None:
        """Before subscribing: hold the watermarks; queue the snapshot the backfill starts from
        (precise unless an earlier catch-up or restore left them held)."""
        precise = not self.committer.holding
        self.committer.hold()
        self._marks = self.committer.snapshot_marks(precise)
        self.ledger.track([], fresh=True)    # live events of this connection, from the first

    def after_connect(self, subscribed_at: float) -> None:
        """Passes 1 and 2, the resync, the restore of drops, the release."""
        self._wait_for(self._marks.done)     # the previous connection's events are committed
        marks: Watermarks = self._marks.result()
        if not self.wants_states:          # homeassistant.event_types leaves state changes out
            self._finish()
            return
        states = self.request({"type": "get_states"}, REQUEST_TIMEOUT_S) or []
        backfill = self.history and bool(marks.newest)
        if backfill:   # drops of a previous connection, if any, are read back with the gap
            entity_ids = sorted({s["entity_id"] for s in states if isinstance(s, dict)
                                 and isinstance(s.get("entity_id"), str)}
                                | set(marks.entities) | set(self.ledger.pending()))
            after = committed_after(marks.entities)
            tail = iso_from_epoch(subscribed_at - self.ha.backfill_margin)
            self._first_pass(marks, Plan(self._start(marks), entity_ids, after, tail))
        else:
            self._lost(self.ledger.give_up(float("inf")), "there is no watermark to "
                                                          "backfill from")
        self._store_resync(states)
        if backfill and self.history and self.ha.backfill_margin > 0:
            self._wait_for(lambda: time.time() >= subscribed_at + self.ha.backfill_margin)
            self._pass(Plan(datetime.fromisoformat(tail), entity_ids, after, tail))
        self._finish()

    def _start(self, marks: Watermarks) -> datetime:
        return datetime.fromisoformat(marks.newest) - timedelta(seconds=self.ha.backfill_margin)

    def _first_pass(self, marks: Watermarks, plan: Plan) -> None:
        log.info("backfilling state changes since %s (%.0f s before the newest committed event; "
                 "gap %.0f s)", plan.start.isoformat(), self.ha.backfill_margin,
                 gap_seconds(marks.newest) or 0)
        self._pass(plan)

    def _store_resync(self, states: list) -> None:
        envelopes = [state_as_event(state, KIND_RESYNC) for state in states
                     if isinstance(state, dict) and state.get("entity_id")
                     and state.get("last_updated")]
        for start in range(0, len(envelopes), self.chunk):
            self._put_paced(envelopes[start:start + self.chunk])
        metrics.RESYNCED.inc(len(envelopes))
        self.counts["resync"] += len(envelopes)
        log.info("resync: stored the current state of %d entities", len(envelopes))

    # -- after drops ----------------------------------------------------------------------------
    def restore_dropped(self) -> None:
        """Read the dropped state changes back from the recorder, then release the marks."""
        self._finish()

    def _finish(self) -> None:
        while True:
            self._restore_rounds()
            total = self.ledger.state_drops
            if not self.ledger.has_pending():
                break
        released = self.committer.release_after_queued(
            lambda: self.ledger.state_drops == total)
        self._wait_for(released.done)
        if released.result():
            self.ledger.stop_tracking()
            log.info("caught up: %d backfilled state changes (%d of them restored after drops) "
                     "and %d resync states are durable", self.counts["backfilled"],
                     self.counts["restored"], self.counts["resync"])
            self.counts = dict.fromkeys(self.counts, 0)

    def _restore_rounds(self) -> None:
        while self.ledger.has_pending():
            if not self.history:
                self._lost(self.ledger.give_up(float("inf")), "no backfill from HA's recorder")
                continue
            self._wait_for(self._restorable)
            self._last_round = time.monotonic()
            pending = self.ledger.pending()
            earliest = min(p.earliest for p in pending.values())
            after = {e: iso_before(p.earliest) for e, p in pending.items()}
            self._pass(Plan(datetime.fromisoformat(earliest) - timedelta(microseconds=1),
                            sorted(pending), after))
            self._lost(self.ledger.give_up(time.monotonic() - GIVE_UP_AFTER_S),
                       f"not in HA's recorder {GIVE_UP_AFTER_S:.0f} s after they were dropped "
                       f"(entities excluded from the recorder?)")

    def _restorable(self) -> bool:
        """The queue has room, and the recorder has had time to commit the latest drop."""
        wait = max(self.ha.backfill_margin, MIN_RETRY_S)
        now = time.monotonic()
        return (not self.committer.full() and now >= self.ledger.last_drop + wait
                and now >= self._last_round + wait)

    def _lost(self, entries: dict[str, Pending], why: str) -> None:
        if not entries:
            return
        count = sum(p.count for p in entries.values())
        earliest = min(p.earliest for p in entries.values())
        metrics.HA_LOST.inc(count)
        log.error("%d dropped state changes of %d entities, fired since %s, cannot be restored: "
                  "%s", count, len(entries), earliest, why)

    # -- passes, paced storing, waiting ---------------------------------------------------------
    def _pass(self, plan: Plan) -> None:
        """One pass with retries. On ``unknown_command`` (no recorder or history in HA)
        backfilling stops for this connection."""
        for attempt in range(1, BACKFILL_TRIES + 1):
            try:
                result = self.backfill.run_pass(plan)
            except CommandError as exc:
                if exc.code == "unknown_command":
                    self.history = False
                    self.on_no_history(exc)
                    return
                log.warning("backfill failed (%s), try %d of %d", exc, attempt, BACKFILL_TRIES)
                until = time.monotonic() + 2.0 * attempt
                self._wait_for(lambda: time.monotonic() >= until)
                continue
            if result.stored:
                log.info("backfilled %d state changes from HA's recorder", result.stored)
            if result.restored:
                metrics.HA_RESTORED.inc(result.restored)
                self.counts["restored"] += result.restored
                log.info("restored %d dropped state changes from HA's recorder (%d still to "
                         "come)", result.restored,
                         sum(p.count for p in self.ledger.pending().values()))
            return
        metrics.GAPS.inc()
        log.error("could not backfill after %d tries: state changes fired while disconnected "
                  "may be missing", BACKFILL_TRIES)

    def _store_backfilled(self, envelopes: list[dict]) -> None:
        self._put_paced(envelopes)
        metrics.BACKFILLED.inc(len(envelopes))
        self.counts["backfilled"] += len(envelopes)

    def _put_paced(self, envelopes: list[dict]) -> None:
        """Into the hand-off once there is room for catch-up work (live events keep theirs)."""
        while not self.handoff.put_catchup(envelopes, PACE_WAIT_S):
            self.check()

    def _wait_for(self, done: Callable[[], bool]) -> None:
        while not done():
            self.check()
            time.sleep(PACE_WAIT_S / 2)
