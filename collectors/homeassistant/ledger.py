"""What became of the live events: which state changes the hand-off accepted, which it dropped,
and which other events were lost.

- ``seen``: the (entity_id, time_fired) of live state changes accepted into the hand-off while a
  catch-up or a restore is under way (``track``, until ``stop_tracking``). A backfill pass never
  stores one of these again. Outside those times nothing reads it, so nothing is kept: its size
  follows the live events of one catch-up, not the rate times a fixed time.
- A dropped state change is *not* seen: it is removed from ``seen`` and noted as pending (per
  entity, the earliest such change and how many), so a later backfill pass restores it from HA's
  recorder once the queue has room again. Whichever pass stores a change of such an entity, fired
  at or after its earliest drop, restores one of them (``restored``): within a connection those
  are exactly the dropped ones, as every other live change is seen.
- A dropped event of any other type is lost: HA keeps no history of it. It is counted, with the
  time range and the event types, for the log and ``ha_ingestor_ha_lost_events_total``.

The reader thread records; the main thread takes what is pending and reports.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from ha_ingestor import metrics

log = logging.getLogger(__name__)


def state_key(event: dict) -> tuple[str, str] | None:
    """(entity_id, time_fired) of a state_changed event: the identity of its InfluxDB point."""
    if event.get("event_type") != "state_changed":
        return None
    entity_id = (event.get("data") or {}).get("entity_id")
    fired = event.get("time_fired")
    if not isinstance(entity_id, str) or not isinstance(fired, str):
        return None
    return entity_id, fired


@dataclass
class Pending:
    """Dropped state changes of one entity not restored yet."""

    earliest: str            # time_fired of the earliest one
    count: int
    since: float             # monotonic time of the first of them


@dataclass
class DropReport:
    """Drops since the last report, for one log line."""

    state_changes: int = 0
    other: Counter = field(default_factory=Counter)      # event type -> count (lost)
    first: str | None = None                             # time_fired range of the lost ones
    last: str | None = None
    while_full: int = 0
    with_room: int = 0

    def describe(self, policy: str, total: int) -> str:
        """One log line: how many, why, and what becomes of them."""
        count = self.while_full + self.with_room
        text = f"dropped {count} events ({total} in total) by homeassistant.full_policy={policy}"
        if self.while_full:
            text += f" while the queue was full ({self.while_full})"
        if self.with_room:
            text += (f" while the queue had room ({self.with_room}: the committer cannot keep "
                     f"up with Home Assistant)")
        if self.state_changes:
            text += (f"; {self.state_changes} state changes will be restored from HA's recorder "
                     f"once the queue has room")
        lost = sum(self.other.values())
        if lost:
            kinds = ", ".join(f"{kind} {n}" for kind, n in self.other.most_common())
            text += (f"; {lost} other events fired from {self.first} to {self.last} are lost "
                     f"({kinds}): HA keeps no history of them")
        return text

    def add_lost(self, event: dict) -> None:
        self.other[str(event.get("event_type"))] += 1
        fired = event.get("time_fired")
        if isinstance(fired, str):
            self.first = fired if self.first is None else min(self.first, fired)
            self.last = fired if self.last is None else max(self.last, fired)


class LiveLedger:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: set[tuple[str, str]] = set()
        self._pending: dict[str, Pending] = {}
        self._report = DropReport()
        self.tracking = False         # keeping ``seen``
        self.state_drops = 0          # state changes dropped, in total
        self.dropped = 0              # events dropped, in total
        self.last_drop = 0.0          # monotonic time of the latest drop

    def track(self, waiting: list[dict], fresh: bool = False) -> None:
        """Keep ``seen`` from now on, starting with the live events ``waiting`` in the hand-off
        (``fresh``: forget what was seen before)."""
        with self._lock:
            if fresh:
                self._seen = set()
            self.tracking = True
            self._seen.update(key for key in (state_key(e["event"]) for e in waiting) if key)

    def stop_tracking(self) -> None:
        """A catch-up or restore is durable: forget ``seen``, unless a drop is pending again."""
        with self._lock:
            if not self._pending:
                self.tracking = False
                self._seen = set()

    # -- the reader thread ----------------------------------------------------------------------
    def accepted(self, envelopes: list[dict]) -> None:
        """Live events about to enter the hand-off (seen from now on, unless dropped)."""
        if not self.tracking:
            return
        keys = [key for key in (state_key(e["event"]) for e in envelopes) if key]
        if keys:
            with self._lock:
                self._seen.update(keys)

    def dropped_events(self, envelopes: list[dict], queue_full: bool) -> int:
        """Live events the hand-off dropped (``queue_full``: its backlog built up while the
        queue file was full). Returns how many of them are state changes."""
        states = 0
        with self._lock:
            for envelope in envelopes:
                key = state_key(envelope["event"])
                if key is None:
                    self._report.add_lost(envelope["event"])
                    continue
                states += 1
                self._seen.discard(key)
                pending = self._pending.get(key[0])
                if pending is None:
                    self._pending[key[0]] = Pending(key[1], 1, time.monotonic())
                else:
                    pending.earliest = min(pending.earliest, key[1])
                    pending.count += 1
            self.state_drops += states
            self.dropped += len(envelopes)
            self._report.state_changes += states
            if queue_full:
                self._report.while_full += len(envelopes)
            else:
                self._report.with_room += len(envelopes)
            self.last_drop = time.monotonic()
        metrics.HA_LOST.inc(len(envelopes) - states)
        return states

    # -- the main thread ------------------------------------------------------------------------
    def is_seen(self, key: tuple[str, str]) -> bool:
        return key in self._seen

    def remember(self, keys: list[tuple[str, str]]) -> None:
        """State changes a backfill pass stored: a later pass does not store them again."""
        with self._lock:
            self._seen.update(keys)

    def has_pending(self) -> bool:
        return bool(self._pending)

    def pending(self) -> dict[str, Pending]:
        """The dropped state changes not restored yet, per entity (a copy)."""
        with self._lock:
            return {e: Pending(p.earliest, p.count, p.since) for e, p in self._pending.items()}

    def restored(self, entity_id: str, fired: str) -> bool:
        """A backfill pass stored this change: one of the entity's drops, if it is pending and
        the change is not older than the earliest of them."""
        if entity_id not in self._pending:
            return False
        with self._lock:
            pending = self._pending.get(entity_id)
            if pending is None or fired < pending.earliest:
                return False
            pending.count -= 1
            if pending.count <= 0:
                del self._pending[entity_id]
            return True

    def give_up(self, dropped_before: float) -> dict[str, Pending]:
        """Stop waiting for the drops of entities whose first drop is older than that
        (monotonic); returns them."""
        with self._lock:
            old = {e: p for e, p in self._pending.items() if p.since < dropped_before}
            for entity_id in old:
                del self._pending[entity_id]
            return old

    def seen_count(self) -> int:
        return len(self._seen)

    def take_report(self) -> DropReport | None:
        with self._lock:
            if not (self._report.while_full or self._report.with_room):
                return None
            report, self._report = self._report, DropReport()
            return report
