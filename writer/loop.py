"""The writer loop: queue files → points → InfluxDB (or, at a fleet's site, NATS JetStream),
acking only what the sink accepted.

One round: take up to ``influxdb.batch_size`` events fairly from every queue file (waiting at most
``influxdb.flush_interval`` for a batch to fill), convert them, write the lines, then store dead
letters and ack the queue items. A write (``writer.delivery``) has three outcomes:

- accepted: ack;
- some lines rejected (400/422): bisect the batch down to the rejected lines, write the rest,
  dead-letter only the events whose lines InfluxDB rejects, with its reason; 413: split;
- not written (network, 5xx, 429, wrong credentials, missing database): keep the batch and retry
  for ever with the shared backoff (honouring ``Retry-After``); nothing is dropped.

One event's problem is that event's problem: whatever converting it or encoding its line raises,
the event becomes a dead letter with the reason and the rest of the batch goes on
(``writer.conversion``, inline or in a converter process); an unexpected error while writing is
bisected down to the line like a rejection. An item that kills the writer (or its converter
process) is moved aside by ``writer.crashguard``; the queue files and a full disk are
``writer.queues``'. The main loop ticks the heartbeat
(``/healthz``, ``ha-ingestor run``) on every round and while it waits for InfluxDB.
"""

from __future__ import annotations

import logging
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path

from ha_ingestor import metrics
from ha_ingestor.envelope import IMPORT
from ha_ingestor.errors import DiskFull, Stopping
from ha_ingestor.lifecycle import HEARTBEAT, StopFlag
from ha_ingestor.queue import Consumer
from writer.conversion import InlineConversion, ProcessConversion, separate_process_helps
from writer.convert import Converter
from writer.crashguard import CrashGuard
from writer.delivery import Delivery
from writer.progress import Progress
from writer.queues import WriterQueues
from writer.sinks import Sink

log = logging.getLogger("writer")

IDLE_POLL_S = 0.05          # how often an idle writer looks for new events
STATUS_EVERY_S = 5.0        # queue gauges and the replay progress
WRITE_WAIT_SLICE_S = 1.0    # how often the heartbeat ticks while a write is retried
IMPORT_ROUND_EVENTS = 1000  # import events in one round (docs/import.md, "Live data first")
QUEUE_IDENTITY_KEY = "writer.queue_identity"


@dataclass
class Round:
    """The events taken in one round, and what became of them. Events are not kept: a line
    remembers (source, item id, position) and the event is read back from the queue file only
    if InfluxDB rejects its line, so memory stays at one batch of lines."""

    taken: dict[str, list[int]] = field(default_factory=dict)       # source -> item ids
    counts: dict[str, int] = field(default_factory=dict)            # source -> events
    lines: list[bytes] = field(default_factory=list)                # UTF-8, one per point
    owners: list[tuple[str, int, int]] = field(default_factory=list)  # per line
    dead: dict[str, list[tuple[dict, str]]] = field(default_factory=dict)
    dead_kinds: dict[str, list[str]] = field(default_factory=dict)  # metric label per dead letter
    events: int = 0

    def add_dead(self, source: str, event: dict, reason: str, kind: str) -> None:
        self.dead.setdefault(source, []).append((event, reason))
        self.dead_kinds.setdefault(source, []).append(kind)


class WriterLoop:
    def __init__(self, queue_dir: Path, sink: Sink, converter: Converter, stop: StopFlag,
                 batch_size: int, flush_interval: float, move_aside_after: int = 3,
                 converter_process: bool | None = None, target: str = "InfluxDB"):
        self.guard = CrashGuard(move_aside_after)
        self.queues = WriterQueues(queue_dir, stop, self.guard.opened)   # exit 4: another writer
        self.sink = sink
        self.converter = converter
        self.stop = stop
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.consumers = self.queues.consumers
        self.converter_process = (separate_process_helps() if converter_process is None
                                  else converter_process)
        self.conversion: InlineConversion | ProcessConversion = InlineConversion(converter,
                                                                                 self._mark)
        self.delivery = Delivery(sink, stop, batch_size, target)
        self.wants_origins = getattr(sink, "wants_origins", False)
        self.item_prefix: dict[str, str] = {}          # source -> queue file identity.source
        self.queue_ok = True
        self._next_source = 0
        self._importing = False          # the last look at the import queue found events
        self._status_at = 0.0
        self.progress = Progress()

    # ---- life cycle -----------------------------------------------------------------------------

    def ready(self) -> bool:
        return self.delivery.up and self.queue_ok and not self.queues.disk_full

    def run(self) -> None:
        """Until a stop is requested: take and convert a batch while the previous one is being
        written (one write in flight, acked in order), then store dead letters and ack. The batch
        in hand is finished (or, if InfluxDB cannot take it, left in the queue) before returning."""
        self.delivery.check()
        pending: tuple[Round, Future | None] | None = None
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="influx-write")
        if self.converter_process:
            self.conversion = ProcessConversion(self.converter.schema, self._mark)
        try:
            while not self.stop.is_set():
                HEARTBEAT.tick()
                self.queues.open_new_files()
                self._report_status()
                batch = self._take_round()
                self._converted()                   # inline: converted while taken
                if pending is not None:
                    self._complete(*pending)        # meanwhile a converter process converts
                    pending = None
                self.conversion.finish(batch)
                self._converted()
                if batch.events == 0:
                    self.delivery.ping_when_idle()
                    self.stop.wait(IDLE_POLL_S)
                    continue
                future = executor.submit(self.delivery.deliver_all, batch.lines,
                                         self._origins(batch)) if batch.lines else None
                pending = (batch, future)
            if pending is not None:
                self._complete(*pending)
        finally:
            self.stop.set()    # on an error here, a write still retrying gives up (not acked)
            executor.shutdown(wait=True)
            self.close()

    def close(self) -> None:
        self.conversion.close()
        self.queues.close()
        self.sink.close()
        self.progress.close()

    # ---- taking events --------------------------------------------------------------------------

    def _take_round(self) -> Round:
        """Up to batch_size events, fairly across the live sources; waits up to flush_interval
        for more when the first take did not fill the batch.

        Live data first: the import queue only in a round where no live event waits, at most
        IMPORT_ROUND_EVENTS of it, so that a live event arriving meanwhile waits for one small
        write at most; and while the import queue has events, a round with live events is
        written at once instead of waiting flush_interval for more (the writer is busy with the
        import anyway, and the live events should not wait behind it)."""
        batch = Round()
        deadline = time.monotonic() + self.flush_interval
        while True:
            try:
                took = self._take_fair(batch)
                if batch.events == 0 and IMPORT in self.consumers:
                    self._importing = self._take_share(batch, IMPORT,
                                                       min(self.batch_size, IMPORT_ROUND_EVENTS))
                    break
            except Stopping:                   # the disk is full and a stop was requested
                break
            if batch.events >= self.batch_size or self.stop.is_set() or self._importing:
                break
            remaining = deadline - time.monotonic()
            if batch.events == 0 or remaining <= 0:
                break
            if not took:
                self.stop.wait(min(IDLE_POLL_S, remaining))
        return batch

    def _take_fair(self, batch: Round) -> bool:
        sources = [source for source in self.consumers if source != IMPORT]
        if not sources:
            return False
        took = False
        start = self._next_source % len(sources)
        self._next_source += 1
        order = sources[start:] + sources[:start]
        for i, source in enumerate(order):
            room = self.batch_size - batch.events
            if room <= 0:
                break
            share = max(1, room // (len(order) - i))
            took = self._take_share(batch, source, share) or took
        return took

    def _take_share(self, batch: Round, source: str, share: int) -> bool:
        """Items from one source until ``share`` events, one item at a time, each handed to the
        conversion and let go before the next is read (memory: one item of decoded events)."""
        consumer, taken = self.consumers[source], 0
        if self.wants_origins and source not in self.item_prefix:
            self.item_prefix[source] = self.queues.call(
                source, "identity", lambda: f"{queue_identity(consumer)}.{source}")
        while taken < share:
            items = self.queues.call(source, "take", lambda: consumer.take(1))
            if not items:
                break
            item = items[0]
            deaths = self.queues.call(source, "move aside", lambda: self.guard.check(
                source, consumer, item.item_id))
            if deaths is None:
                continue
            batch.taken.setdefault(source, []).append(item.item_id)
            batch.counts[source] = batch.counts.get(source, 0) + item.count
            batch.events += item.count
            taken += item.count
            self.conversion.add(batch, source, item, deaths)
            del items, item
        return taken > 0

    def _mark(self, source: str, item_id: int, deaths: int) -> None:
        """The item is being converted (``writer.crashguard``). On a full disk the record is
        skipped: the writer is waiting for space on its takes and acks anyway."""
        try:
            self.guard.mark(source, self.consumers[source], item_id, deaths)
        except DiskFull:
            pass

    def _converted(self) -> None:
        try:
            self.guard.converted()
        except DiskFull:                    # cleared at the next round
            pass

    def _origins(self, batch: Round) -> list[tuple[str, int]] | None:
        """(queue item key, position) of every line, for a sink that names what it sends
        (the NATS sink's message ids)."""
        if not self.wants_origins:
            return None
        prefix = self.item_prefix
        return [(f"{prefix[source]}.{item_id}", position)
                for source, item_id, position in batch.owners]

    # ---- writing --------------------------------------------------------------------------------

    def _complete(self, batch: Round, future: Future | None) -> None:
        """Wait for the batch's write; then dead letters and acks (or, on a stop while InfluxDB
        could not take it, give the items back)."""
        try:
            rejected = self._wait_for(future) if future is not None else []
        except Stopping:
            self._give_back(batch)
            log.warning("stopping with %d events not written; they stay in the queue",
                        batch.events)
            return
        try:
            self._dead_letter_rejected(batch, rejected)
            self._finish(batch, len(batch.lines) - len(rejected))
        except Stopping:
            log.warning("stopping with %d events written but not acknowledged (the disk is "
                        "full): they are written again after a restart, as identical points",
                        batch.events)

    def _give_back(self, batch: Round) -> None:
        try:
            for source, item_ids in batch.taken.items():
                self.consumers[source].nack(item_ids)
        except DiskFull:      # still in flight: ready again when the writer opens the file
            pass

    def _wait_for(self, future: Future) -> list[tuple[int, str]]:
        """The write's result; queue gauges stay fresh and the heartbeat ticks while InfluxDB
        is away."""
        while True:
            HEARTBEAT.tick()
            try:
                return future.result(timeout=WRITE_WAIT_SLICE_S)
            except FutureTimeout:
                self._report_status()

    def _dead_letter_rejected(self, batch: Round, rejected: list[tuple[int, str]]) -> None:
        items: dict[tuple[str, int], list[dict] | None] = {}
        for index, reason in rejected:
            source, item_id, position = batch.owners[index]
            if (source, item_id) not in items:
                consumer = self.consumers[source]
                items[(source, item_id)] = events = self.queues.call(
                    source, "re-read", lambda: consumer.events_of(item_id))
                if events is None:
                    log.warning("item %d of the %s queue was removed while being written "
                                "(queue purge?): its lines InfluxDB rejected are not kept as "
                                "dead letters", item_id, source)
            events = items[(source, item_id)]
            if events is not None:
                batch.add_dead(source, events[position], f"rejected by InfluxDB: {reason}",
                               "rejected")

    def _finish(self, batch: Round, points: int) -> None:
        for source, item_ids in batch.taken.items():
            consumer = self.consumers[source]
            dead = batch.dead.get(source, [])
            if dead:
                for kind in batch.dead_kinds[source]:
                    metrics.DEAD_LETTERS.labels(source=source, reason=kind).inc()
                log.warning("%d %s events moved to the dead-letter store, first: %s",
                            len(dead), source, dead[0][1][:300])
            self.queues.call(source, "acknowledge", lambda: consumer.ack(item_ids, dead))
            metrics.EVENTS_WRITTEN.labels(source=source).inc(batch.counts.get(source, 0))
        metrics.POINTS_WRITTEN.inc(points)

    # ---- status ---------------------------------------------------------------------------------

    def _report_status(self) -> None:
        now = time.monotonic()
        if now - self._status_at < STATUS_EVERY_S:
            return
        behind = 0
        try:
            for source, consumer in self.consumers.items():
                status = consumer.status()
                behind += status.ready + status.in_flight
                metrics.QUEUE_READY.labels(source=source).set(status.ready)
                metrics.QUEUE_IN_FLIGHT.labels(source=source).set(status.in_flight)
                metrics.QUEUE_DEAD.labels(source=source).set(status.dead)
                metrics.QUEUE_OLDEST_AGE.labels(source=source).set(status.oldest_age_s or 0)
                metrics.QUEUE_BYTES.labels(source=source).set(status.bytes)
            self.queue_ok = True
        except Exception as exc:   # a status read failing must not stop the writing
            self.queue_ok = False
            log.error("cannot read queue status: %s", exc)
        if self.queue_ok:
            self.progress.update(behind)
        self._status_at = now


def queue_identity(consumer: Consumer) -> str:
    """A random name of this queue file, made once and kept in its meta table: item ids start
    again in a new file, so a message id also names the file."""
    value = consumer.get_meta(QUEUE_IDENTITY_KEY)
    if value is None:
        value = uuid.uuid4().hex[:16]
        consumer.set_meta(QUEUE_IDENTITY_KEY, value)
    return value
