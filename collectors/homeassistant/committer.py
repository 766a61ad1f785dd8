"""The committer thread: hand-off -> durable queue, one commit per batch.

A batch closes at ``queue.batch_events`` events or ``queue.batch_interval`` after its first event,
whichever comes first. The queue's SQLite connection lives in this thread only.

It also keeps the *watermarks* the backfill starts from: the newest ``time_fired`` committed, over
all state changes and per entity. They are written in the same transaction as a batch (so they are
never ahead of what is durable), and not at all while they are *held*: from the start of a
connection until its catch-up is durable, and from a dropped state change until it is restored
from HA's recorder. A collector killed meanwhile therefore backfills again from the held
watermarks instead of skipping what is missing. Two control items in the hand-off's FIFO take
effect exactly between the events queued before and after them: ``snapshot_marks`` (the marks a
connection's backfill starts from) and ``release_after_queued`` (the marks move again).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import Future
from datetime import datetime
from typing import Callable

from ha_ingestor import metrics
from ha_ingestor.config import QueueConfig
from ha_ingestor.envelope import HA
from ha_ingestor.errors import QueueFull
from ha_ingestor.queue import Producer, unstorable

from collectors.homeassistant.handoff import Control, Handoff

log = logging.getLogger(__name__)

WATERMARK_KEY = "ha.newest_time_fired"       # ISO time_fired of the newest committed state change
ENTITY_MARKS_KEY = "ha.entity_newest"        # JSON {entity_id: epoch seconds}
ENTITY_MARKS_EVERY_S = 1.0                   # a large per-entity map is written at most this often
ENTITY_MARKS_SMALL = 200                     # ... a map this small goes with every batch
FULL_RETRY_S = 0.5


def epoch(iso_time: str) -> float:
    """Epoch seconds of an HA time string (``datetime.isoformat()`` of a UTC time)."""
    return datetime.fromisoformat(iso_time).timestamp()


class Watermarks:
    """Newest committed state change, overall (as HA's ISO string) and per entity (epoch)."""

    def __init__(self, newest: str | None = None, entities: dict[str, float] | None = None):
        self.newest = newest
        self.entities = dict(entities or {})

    @classmethod
    def load(cls, producer: Producer) -> "Watermarks":
        raw = producer.get_meta(ENTITY_MARKS_KEY)
        try:
            entities = json.loads(raw) if raw else {}
        except ValueError:
            log.warning("ignoring an unreadable %s in the queue file", ENTITY_MARKS_KEY)
            entities = {}
        return cls(producer.get_meta(WATERMARK_KEY), entities)

    def copy(self) -> "Watermarks":
        return Watermarks(self.newest, self.entities)

    def observe(self, envelopes: list[dict]) -> None:
        """Advance the marks with the state changes of a committed batch."""
        batch_newest: dict[str, str] = {}
        for envelope in envelopes:
            event = envelope["event"]
            if event.get("event_type") != "state_changed":
                continue
            entity_id = (event.get("data") or {}).get("entity_id")
            fired = event.get("time_fired")
            if not entity_id or not isinstance(fired, str):
                continue
            # HA's UTC isoformat strings sort in time order ("+" < "." < digits).
            if fired > batch_newest.get(entity_id, ""):
                batch_newest[entity_id] = fired
        for entity_id, fired in batch_newest.items():
            try:
                stamp = epoch(fired)
            except ValueError:
                continue
            if stamp > self.entities.get(entity_id, 0.0):
                self.entities[entity_id] = stamp
            if self.newest is None or fired > self.newest:
                self.newest = fired


class Committer:
    """Runs in its own thread; ``error`` holds what stopped it (e.g. an unusable queue file)."""

    def __init__(self, queue_config: QueueConfig, handoff: Handoff):
        self.config = queue_config
        self.handoff = handoff
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self.holding = True             # watermarks held: until the first catch-up is durable
        self.committed = 0
        self._marks = Watermarks()      # in memory: everything committed
        self._persisted = Watermarks()  # what the queue file holds
        self._marks_written_at = 0.0
        self._stopping = False
        self._full_since: float | None = None
        self._full_seen_ns = 0          # the latest moment the queue file was found full
        self._producer: Producer | None = None
        self._thread = threading.Thread(target=self._run, name="ha-committer", daemon=True)
        self._latency = metrics.COMMIT_LATENCY.labels(HA)
        self._committed_metric = metrics.EVENTS_COMMITTED.labels(HA)
        self._batches_metric = metrics.BATCHES_COMMITTED.labels(HA)

    # -- called from other threads -------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Commit what the hand-off holds, then close the queue file."""
        self._stopping = True
        self.handoff.wake()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("the committer did not finish within %.0f s; %d events not committed",
                      timeout, len(self.handoff))

    def alive(self) -> bool:
        return self._thread.is_alive()

    def hold(self) -> None:
        """Stop writing watermarks from now on (any thread; takes effect at once)."""
        self.holding = True

    def snapshot_marks(self, precise: bool) -> Future:
        """A Future of the watermarks once everything queued so far is committed: the in-memory
        ones (written down first) when ``precise``, else the held ones in the queue file (older:
        an earlier catch-up or restore did not finish, and only they are safe to start from)."""
        future: Future = Future()

        def snapshot() -> None:
            if precise:
                self._write_marks()
            future.set_result((self._marks if precise else self._persisted).copy())
        self.handoff.put_control(snapshot)
        return future

    def release_after_queued(self, still_valid: Callable[[], bool]) -> Future:
        """Once everything queued so far is committed, let the watermarks move again, unless
        ``still_valid()`` says otherwise by then (a state change was dropped meanwhile). Returns
        a Future of whether they were released."""
        future: Future = Future()

        def release() -> None:
            valid = still_valid()
            if valid:
                self.holding = False
                self._write_marks()
            future.set_result(valid)
        self.handoff.put_control(release)
        return future

    def full(self) -> bool:
        return self._full_since is not None

    def full_since(self, rx_ns: int | None) -> bool:
        """Whether the queue file is full, or was at some moment after ``rx_ns`` (wall ns)."""
        return self.full() or (rx_ns is not None and self._full_seen_ns >= rx_ns)

    def dead_letter_later(self, entries: list[tuple[dict, str]]) -> None:
        """Store (envelope, reason) dead letters in order with the events queued before them."""
        self.handoff.put_control(lambda: self._store_dead(entries, "unreadable_frame"))

    # -- the thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._producer = Producer(self.config.dir, HA, self.config.max_bytes)
            self._marks = Watermarks.load(self._producer)
            self._persisted = self._marks.copy()
            self.ready.set()
            self._loop()
        except BaseException as exc:   # handed to the main thread, which exits with its code
            self.error = exc
            self.ready.set()
        finally:
            if self._producer is not None:
                self._producer.close()

    def _loop(self) -> None:
        pending: list[dict] = []
        opened = 0.0
        while True:
            wait = 0.2 if not pending else max(0.0, opened + self.config.batch_interval
                                               - time.monotonic())
            items = self.handoff.take(self.config.batch_events - len(pending), wait)
            for item in items:
                if isinstance(item, Control):
                    self._commit(pending)
                    pending = []
                    item.action()
                    continue
                if not pending:
                    opened = time.monotonic()
                pending.append(item)
            due = pending and (len(pending) >= self.config.batch_events or self._stopping
                               or time.monotonic() - opened >= self.config.batch_interval)
            if due:
                self._commit(pending)
                pending = []
            if self._stopping and not pending and not len(self.handoff):
                return

    def _commit(self, events: list[dict]) -> None:
        while events:
            meta = self._meta_for(events)
            try:
                self._producer.append(events, meta)
            except QueueFull as exc:
                if not self._wait_for_room(exc, len(events)):
                    return
                continue
            except (ValueError, TypeError, RecursionError) as exc:   # an event it cannot store
                events = self._set_aside_unstorable(events, exc)
                continue
            self._after_commit(events, meta or {})
            return

    def _set_aside_unstorable(self, events: list[dict], error: Exception) -> list[dict]:
        """Dead-letter the events the queue cannot store (a frame a real HA cannot send, e.g.
        nested about a thousand levels deep); returns the others. Re-raises when every event is
        storable on its own (the failure is not one event's)."""
        keep, dead = [], []
        for envelope in events:
            reason = unstorable(envelope)
            if reason is None:
                keep.append(envelope)
            else:
                event = envelope.get("event") or {}
                dead.append(({"src": HA, "rx": envelope.get("rx"), "kind": envelope.get("kind"),
                              "event_type": str(event.get("event_type"))[:200],
                              "error": reason}, reason))
        if not dead:
            raise error
        self._store_dead(dead, "unstorable")
        return keep

    def _store_dead(self, entries: list[tuple[dict, str]], label: str) -> None:
        try:
            self._producer.dead_letter(entries)
        except QueueFull as exc:
            metrics.EVENTS_DROPPED.labels(HA, "queue_full").inc(len(entries))
            log.error("%s: %d dead letter(s) could not be stored and are lost", exc, len(entries))
            return
        metrics.DEAD_LETTERS.labels(source=HA, reason=label).inc(len(entries))
        log.warning("kept %d event(s) or frame(s) as dead letters, e.g.: %s", len(entries),
                    entries[0][1][:300])

    def _meta_for(self, events: list[dict]) -> dict[str, str] | None:
        """Watermarks to write with this batch (none while they are held)."""
        if self.holding:
            return None
        trial = self._marks.copy()
        trial.observe(events)
        meta = {}
        if trial.newest and trial.newest != self._persisted.newest:
            meta[WATERMARK_KEY] = trial.newest
        if trial.entities != self._persisted.entities and (
                len(trial.entities) <= ENTITY_MARKS_SMALL
                or time.monotonic() - self._marks_written_at >= ENTITY_MARKS_EVERY_S):
            meta[ENTITY_MARKS_KEY] = json.dumps(trial.entities, separators=(",", ":"))
        return meta or None

    def _after_commit(self, events: list[dict], meta: dict[str, str]) -> None:
        now_ns = time.time_ns()
        for envelope in events:
            self._latency.observe((now_ns - envelope["rx"]) / 1e9)
        self._committed_metric.inc(len(events))
        self._batches_metric.inc()
        self.committed += len(events)
        self._marks.observe(events)
        if WATERMARK_KEY in meta:
            self._persisted.newest = meta[WATERMARK_KEY]
        if ENTITY_MARKS_KEY in meta:
            self._persisted.entities = json.loads(meta[ENTITY_MARKS_KEY])
            self._marks_written_at = time.monotonic()
        if self._full_since is not None:
            log.warning("queue has room again after %.0f s; committing", time.monotonic()
                        - self._full_since)
            self._full_since = None
            self._full_seen_ns = time.time_ns()
            metrics.QUEUE_FULL.labels(HA).set(0)

    def _wait_for_room(self, exc: QueueFull, count: int) -> bool:
        """Queue full: hold this batch (the hand-off fills, then drops by policy) and retry."""
        self._full_seen_ns = time.time_ns()
        if self._full_since is None:
            self._full_since = time.monotonic()
            metrics.QUEUE_FULL.labels(HA).set(1)
            log.error("%s; holding up to %d events in memory, then dropping by "
                      "homeassistant.full_policy=%s", exc, self.handoff.max_events,
                      self.handoff.policy)
        if self._stopping:
            log.error("stopping with the queue full: %d events not committed", count)
            metrics.EVENTS_DROPPED.labels(HA, "stopped_while_full").inc(count)
            return False
        time.sleep(FULL_RETRY_S)
        return True

    def _write_marks(self) -> None:
        """Write the in-memory watermarks now (everything before is committed)."""
        meta = {}
        if self._marks.newest:
            meta[WATERMARK_KEY] = self._marks.newest
        meta[ENTITY_MARKS_KEY] = json.dumps(self._marks.entities, separators=(",", ":"))
        try:
            for key, value in meta.items():
                self._producer.set_meta(key, value)
        except QueueFull as exc:     # the next batch carries them; until then the older marks
            log.warning("watermarks not written yet (%s); they go with the next batch", exc)
            return
        self._persisted = self._marks.copy()
        self._marks_written_at = time.monotonic()
