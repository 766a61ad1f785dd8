"""The committer thread: batches from the inbox → one durable ``Producer.append`` each → the
packet ids to acknowledge, handed back to the network thread.

A batch is committed with what recognises its messages if the broker sends them again: the
fingerprints of its QoS 1 messages (redelivery.py) and, per topic with retained messages, the
last payload stored (retained.py), both in the same transaction as the batch.

It owns the queue file (the SQLite connections are opened, used and closed in this thread). When
the queue is full it keeps the batch, stops committing (so nothing is acknowledged and the broker
stops sending once its in-flight window is used up), polls until the writer frees space and
resumes. An exception here is stored and re-raised by the network thread: the process exits
non-zero, never silently without its committer.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections import deque
from typing import Callable

from ha_ingestor import metrics
from ha_ingestor.backoff import Backoff
from ha_ingestor.envelope import MQTT, mqtt_event, mqtt_payload
from ha_ingestor.errors import DiskFull, QueueFull
from ha_ingestor.queue import Producer
from ha_ingestor.topicfilter import TopicSet

from collectors.mqtt import redelivery, retained, subscriptions
from collectors.mqtt.inbox import Inbox
from collectors.mqtt.redelivery import Redelivery
from collectors.mqtt.retained import RetainedTopics

log = logging.getLogger("collectors.mqtt")

FULL_POLL_S = 0.5
REASON_TOO_LARGE = "payload_too_large"
REASON_BAD_TOPIC = "topic_not_utf8"
REASON_UNEXPECTED = "unexpected"


def _raw_envelope(rx: int, msg) -> dict:
    """A message kept as it came: the topic's bytes decoded with replacement characters (its
    exact bytes in ``topic_b64``) and the payload as ``mqtt_event`` stores any payload."""
    raw_topic = bytes(getattr(msg, "_topic", b"") or b"")
    event = mqtt_event(raw_topic.decode("utf-8", "replace"), bytes(msg.payload), msg.qos,
                       msg.retain, rx)
    event["topic_b64"] = base64.b64encode(raw_topic).decode("ascii")
    return event


class Committer:
    """The thread that owns the queue file: batches in, packet ids to acknowledge out."""

    def __init__(self, config, inbox: Inbox, wake: Callable[[], None]):
        self.queue_config = config.queue
        self.max_payload = config.mqtt.max_payload_bytes
        self.excluded_topics = TopicSet(config.mqtt.exclude_topics)
        self.inbox = inbox
        self.wake = wake                      # wakes the network thread's select()
        self.acks: deque = deque()            # (generation, [(mid, qos)], fingerprints) to send
        self.dropped: deque = deque()         # fingerprints whose acks were dropped; None: forget
        self.error: BaseException | None = None
        self.full = False
        self.abandoned = 0                    # QoS 0 messages still held when we had to stop
        self.ready = threading.Event()        # the queue file is open (or opening failed)
        self.redelivery = Redelivery()
        self.retained = RetainedTopics()
        self.stored_subscriptions: str | None = None   # the record subscriptions.py keeps
        self._saves: deque = deque()          # (key, value, done event) to write
        self._meta_written = True             # clear a stale value once if we do not trust it
        self._abort = threading.Event()
        self._disk_backoff = Backoff(base=0.5, factor=2.0, cap=5.0)    # a refused write
        self._thread = threading.Thread(target=self._main, name="mqtt-committer", daemon=True)
        self._committed = metrics.EVENTS_COMMITTED.labels(source=MQTT)
        self._batches = metrics.BATCHES_COMMITTED.labels(source=MQTT)
        self._latency = metrics.COMMIT_LATENCY.labels(source=MQTT)
        self._full_gauge = metrics.QUEUE_FULL.labels(source=MQTT)

    # --- control (network thread) --------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def abort(self) -> None:
        """Stop without committing more (an error elsewhere, or a stop while the queue is full)."""
        self._abort.set()
        self.inbox.close()

    def save_meta(self, key: str, value: str) -> threading.Event:
        """Have the committer write one meta value (before its next batch); the event is set
        once it is durable."""
        done = threading.Event()
        self._saves.append((key, value, done))
        self.inbox.poke()
        return done

    def join(self, timeout: float | None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # --- the thread ----------------------------------------------------------------------------

    def _main(self) -> None:
        producer = None
        try:
            producer = Producer(self.queue_config.dir, MQTT, self.queue_config.max_bytes)
            self.redelivery = Redelivery(producer.get_meta(redelivery.META_KEY))
            self.retained = RetainedTopics(producer.meta_items(retained.META_PREFIX))
            self.stored_subscriptions = producer.get_meta(subscriptions.META_KEY)
            self.ready.set()
            while not self._abort.is_set():
                taken = self.inbox.take()
                if taken is None:
                    break
                self._write_saves(producer)
                if taken[0]:
                    self._commit_batch(producer, *taken)
            self._write_saves(producer)
        except BaseException as exc:  # noqa: BLE001 - handed to the network thread, re-raised
            self.error = exc
        finally:
            self.ready.set()
            if producer is not None:
                try:
                    producer.close()
                except Exception as exc:  # noqa: BLE001
                    self.error = self.error or exc
            self.wake()

    def _write_saves(self, producer: Producer) -> None:
        """The meta values the network thread asked for, oldest first. A full disk: try again
        after a pause (the network thread waits for them)."""
        while self._saves and not self._abort.is_set():
            key, value, done = self._saves[0]
            try:
                producer.set_meta(key, value)
            except QueueFull:
                self._abort.wait(FULL_POLL_S)
                self.inbox.poke()
                return
            self._saves.popleft()
            done.set()

    def _commit_batch(self, producer: Producer, batch: list, generation: int) -> None:
        size = sum(len(msg.payload) for _rx, msg in batch)
        events, dead, acks, in_queue, pending = self._prepare(batch)
        fingerprints = self._store(producer, events, dead,
                                   [redelivery.fingerprint(m) for m in in_queue], generation,
                                   pending)
        if fingerprints is None:
            return
        if batch:
            self._latency.observe(max(0.0, (time.time_ns() - batch[0][0]) / 1e9))
        self.redelivery.committed(fingerprints)
        if self.inbox.stale(generation):   # the connection is gone: these acks cannot be sent
            self.redelivery.never_acknowledged(fingerprints)
        else:
            self.acks.append((generation, acks, fingerprints))
        self.inbox.release(len(batch), size)
        self.wake()

    def _prepare(self, batch: list) -> tuple[list, list, list, list, retained.Pending]:
        """Envelopes to store, dead letters, (mid, qos) of every QoS 1/2 message (excluded,
        dead-lettered and already-stored messages are acknowledged too: they are handled, not
        lost), the QoS 1/2 messages that are in the queue once this batch is committed, and what
        the batch changes in the retained messages remembered."""
        events, dead, acks, in_queue = [], [], [], []
        excluded = self.excluded_topics.matches
        limit = self.max_payload
        seen = self._take_dropped()
        pending = self.retained.batch()
        skipped = resent = 0
        for rx, msg in batch:
            if msg.qos:
                acks.append((msg.mid, msg.qos))
                if not msg.dup:
                    seen.first_copy(msg)
                elif seen.already_committed(msg):
                    in_queue.append(msg)
                    skipped += 1
                    continue
            try:
                event = self._envelope(rx, msg, excluded, limit, dead)
            except Exception as exc:  # noqa: BLE001 - one message's problem, not the collector's
                event = None
                dead.append((_raw_envelope(rx, msg), f"{REASON_UNEXPECTED}: {type(exc).__name__}:"
                                                     f" {exc}"))
            if event is None:
                continue
            if pending.resent(event["topic"], msg.payload, msg.retain, rx):
                resent += 1
            else:
                events.append(event)
            if msg.qos:
                in_queue.append(msg)
        if skipped:
            log.info("%d message(s) re-sent by the broker were already in the queue: "
                     "acknowledged, not stored twice", skipped)
        if resent:
            log.info("%d retained message(s) sent again by the broker were stored before: "
                     "acknowledged, not stored again", resent)
        return events, dead, acks, in_queue, pending

    @staticmethod
    def _envelope(rx: int, msg, excluded, limit: int, dead: list) -> dict | None:
        """The envelope to store for one message; None when it is excluded or a dead letter
        (appended to ``dead``)."""
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            dead.append((_raw_envelope(rx, msg), f"{REASON_BAD_TOPIC}: topic is not valid "
                                                 f"UTF-8: {msg._topic!r}"))
            return None
        if excluded(topic):
            return None
        event = mqtt_event(topic, msg.payload, msg.qos, msg.retain, rx)
        if limit and len(msg.payload) > limit:
            dead.append((event, f"{REASON_TOO_LARGE}: payload of {len(msg.payload)} bytes "
                                f"exceeds mqtt.max_payload_bytes ({limit})"))
            return None
        return event

    def _take_dropped(self) -> Redelivery:
        """Fold in what the network thread could not acknowledge (a lost connection)."""
        while self.dropped:
            fingerprints = self.dropped.popleft()
            if fingerprints is None:
                self.redelivery.forget()
            else:
                self.redelivery.never_acknowledged(fingerprints)
        return self.redelivery

    def _store(self, producer: Producer, events: list, dead: list, fingerprints: list,
               generation: int, pending: retained.Pending) -> list | None:
        """One durable commit for the batch, with the fingerprints that recognise its QoS 1
        messages if the broker re-sends them and the retained messages it stores (and one commit
        for its dead letters). Returns the fingerprints of what was committed; None when we gave
        up (abort while the queue was full)."""
        while events:
            try:
                meta = self._meta(fingerprints)
                producer.append(events, meta={**(meta or {}), **pending.meta()})
                self._disk_backoff.reset()
                if meta is not None:
                    self._meta_written = bool(meta[redelivery.META_KEY])
                self.retained.committed(pending)
                self._committed.inc(len(events))
                self._batches.inc()
                break
            except QueueFull as exc:
                events = self._wait_for_space(producer, exc, events, generation)
                if events is None:
                    return None
                if self.inbox.stale(generation):
                    fingerprints = []   # its QoS 1 messages were dropped: the broker re-sends
                    pending = self._pending_of(events)
        while dead:
            try:
                producer.dead_letter(dead)
                for _event, reason in dead:
                    metrics.DEAD_LETTERS.labels(source=MQTT,
                                                reason=reason.split(":", 1)[0]).inc()
                log.warning("kept %d message(s) as dead letters, e.g. %s: %s", len(dead),
                            dead[0][0]["topic"], dead[0][1])
                break
            except QueueFull as exc:
                dead = self._wait_for_space(producer, exc, dead, generation,
                                            qos_of=lambda entry: entry[0]["qos"])
                if dead is None:
                    return None
        if self.full:
            self.full = False
            self._full_gauge.set(0)
            log.info("queue has space again: committing and acknowledging again")
        return fingerprints

    def _pending_of(self, events: list) -> retained.Pending:
        """What ``events`` (what is left of a batch) change in the retained messages remembered."""
        pending = self.retained.batch()
        for event in events:
            pending.record(event["topic"], mqtt_payload(event), event["retain"], event["rx"])
        return pending

    def _meta(self, fingerprints: list) -> dict | None:
        """The recent fingerprints to commit with a batch (cleared once, when untrusted)."""
        value = self.redelivery.meta_with(fingerprints)
        if not value and not self._meta_written:
            return None
        return {redelivery.META_KEY: value}

    def _wait_for_space(self, producer: Producer, exc: QueueFull, items: list, generation: int,
                        qos_of=lambda event: event["qos"]) -> list | None:
        """Hold ``items`` until the queue has room. QoS 1/2 items of a connection that has since
        been lost are dropped: the broker re-sends them. None: aborted."""
        if not self.full:
            self.full = True
            self._full_gauge.set(1)
            log.warning("queue full (%s): holding %d message(s), not acknowledging; the broker "
                        "keeps the rest until the writer frees space", exc, len(items))
            self.wake()
        if isinstance(exc, DiskFull):
            metrics.QUEUE_DISK_FULL.labels(source=MQTT, operation="append").inc()
        # a write the disk refused while the file is below its limits: back off, do not spin
        delay = FULL_POLL_S if producer.is_full() else self._disk_backoff.next_delay()
        while not self._abort.wait(delay) and producer.is_full():
            delay = FULL_POLL_S
        if self._abort.is_set():
            self.abandoned += sum(1 for item in items if not qos_of(item))
            return None
        if self.inbox.stale(generation):
            items = [item for item in items if not qos_of(item)]
        return items
