"""A central writer of a fleet: JetStream → InfluxDB (``ha-ingestor write --from-nats``).

Every central writer pulls from one durable consumer (``nats.durable``), so N of them share the
sites' messages; JetStream hands each message to one writer at a time. A round:

1. fetch messages until ``influxdb.batch_size`` points or ``influxdb.flush_interval``;
2. write their lines with the InfluxDB sink, the way the queue writer does (retry for ever on
   outages, bisect to the points InfluxDB rejects), while the next round is fetched; messages
   held through a long outage are kept ours with in-progress acks, so JetStream does not hand
   them to another writer meanwhile;
3. publish the rejected points, with InfluxDB's reason, to the dead-letter stream;
4. ack the messages, only now: a writer that dies before leaves its messages unacked and
   JetStream delivers them to the others after ``nats.ack_wait``. The points are identical
   (same series, same time), so InfluxDB keeps one.
"""

from __future__ import annotations

import logging
import socket
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

from ha_ingestor import metrics
from ha_ingestor.backoff import Backoff
from ha_ingestor.errors import EXIT_OK, ConfigError, Stopping, TransientError
from ha_ingestor.lifecycle import HEARTBEAT, StopFlag
from writer.delivery import Delivery
from writer.fleet import stream
from writer.fleet.dead import DeadLetters
from writer.fleet.link import NatsLink
from writer.sinks import AccessDenied, open_sink

log = logging.getLogger("writer.central")

STATUS_EVERY_S = 5.0
CONSUMER_CHECK_S = 10.0


@dataclass
class Round:
    """Messages taken in one round and their lines; ``owners[i]`` is the message of line i."""

    messages: list = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)                 # UTF-8, one per point
    owners: list[int] = field(default_factory=list)
    dead: list[tuple[int, bytes, str]] = field(default_factory=list)  # (message, line, reason)

    def add(self, msg) -> None:
        index = len(self.messages)
        self.messages.append(msg)
        try:
            msg.data.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.dead.append((index, msg.data, f"not UTF-8 line protocol ({exc.reason} at byte "
                                               f"{exc.start})"))
            return
        for line in msg.data.split(b"\n"):
            if line.strip():
                self.lines.append(line)
                self.owners.append(index)


class CentralWriter:
    def __init__(self, config, stop: StopFlag, link: NatsLink | None = None):
        self.nats = config.nats
        self.influx = config.influxdb
        self.stop = stop
        self.link = link or NatsLink(self.nats, f"ha-ingestor central {socket.gethostname()}")
        self.delivery = Delivery(open_sink(self.influx), stop, self.influx.batch_size)
        self.dead = DeadLetters(self.link, self.nats, stop)
        self.setup_backoff = Backoff(base=1.0, factor=2.0, cap=30.0)
        self.subscription = None
        self.points_per_message = float(self.nats.message_points)
        self._status_at = 0.0
        self._written = 0
        self._redelivered = 0      # messages JetStream delivered again (a writer died, ...)
        self._checked_at = 0.0
        self._behind: tuple[int, int] | None = None

    def ready(self) -> bool:
        return self.delivery.up and self.subscription is not None

    # ---- life cycle -----------------------------------------------------------------------------

    def run(self) -> None:
        """Until a stop: take a round while the previous one is written; the round in hand is
        finished (or, when InfluxDB cannot take it, handed back to JetStream) before returning."""
        self.delivery.check()
        if not self._subscribe():
            return
        pending: tuple[Round, Future | None] | None = None
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="influx-write")
        try:
            while not self.stop.is_set():
                HEARTBEAT.tick()
                batch = self._take_round()
                if pending is not None:
                    self._complete(*pending, held=batch.messages)
                    pending = None
                if not batch.messages:
                    self.delivery.ping_when_idle()
                    self._check_consumer()
                    continue
                future = executor.submit(self.delivery.deliver_all, batch.lines) \
                    if batch.lines else None
                pending = (batch, future)
                self._report_status()
            if pending is not None:
                self._complete(*pending)
            self._log_redelivered()
        finally:
            self.stop.set()
            executor.shutdown(wait=True)
            self.close()

    def close(self) -> None:
        self.link.close()
        self.delivery.sink.close()

    def _subscribe(self) -> bool:
        """Stream, dead-letter stream and durable consumer (made when missing), then a pull
        subscription on the consumer; retried until it works or a stop."""
        while not self.stop.is_set():
            try:
                report = self.link.call(self._setup, self.nats.connect_timeout * 4)
            except (TransientError, AccessDenied) as exc:
                delay = self.setup_backoff.next_delay()
                level = logging.ERROR if isinstance(exc, AccessDenied) else logging.WARNING
                log.log(level, "cannot set up the JetStream consumer (%s); retrying in %.0f s",
                        exc, delay)
                self.link.reset()
                self.stop.wait(delay)
                continue
            for line in report.lines():
                log.info("JetStream: %s", line)
            self.setup_backoff.reset()
            return True
        return False

    async def _setup(self) -> stream.SetupReport:
        js = await self.link.jetstream()
        report = await stream.ensure(js, self.nats)
        self.subscription = await js.pull_subscribe_bind(durable=self.nats.durable,
                                                         stream=self.nats.stream)
        return report

    # ---- taking messages ------------------------------------------------------------------------

    def _take_round(self) -> Round:
        batch = Round()
        try:
            self.link.call(lambda: self._fetch(batch), self.influx.flush_interval + 30)
        except (TransientError, AccessDenied) as exc:
            log.warning("fetching from JetStream failed (%s); %d messages taken this round",
                        exc, len(batch.messages))
            if not batch.messages:
                self._resubscribe()
        return batch

    async def _fetch(self, batch: Round) -> None:
        """Messages until batch_size points or flush_interval; adapts how many messages it asks
        for to the points they carried so far."""
        deadline = time.monotonic() + self.influx.flush_interval
        while len(batch.lines) < self.influx.batch_size and not self.stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0.001:
                return
            want = (self.influx.batch_size - len(batch.lines)) / self.points_per_message
            try:
                messages = await self.subscription.fetch(max(1, min(int(want) + 1, 10_000)),
                                                         timeout=remaining)
            except TimeoutError:
                return
            for msg in messages:
                batch.add(msg)
                if msg.metadata.num_delivered > 1:
                    self._redelivered += 1
            if batch.messages:
                self.points_per_message = max(1.0, len(batch.lines) / len(batch.messages))

    def _resubscribe(self) -> None:
        self.subscription = None
        self.link.reset()
        self.stop.wait(self.setup_backoff.next_delay())
        self._subscribe()

    # ---- finishing a round ----------------------------------------------------------------------

    def _complete(self, batch: Round, future: Future | None, held: list = ()) -> None:
        """Wait for the round's write (``held``: the next round's messages, kept ours
        meanwhile too); dead letters; ack."""
        try:
            rejected = self._wait_for(batch.messages + list(held), future) \
                if future is not None else []
        except Stopping:
            self._hand_back(batch)
            return
        batch.dead += [(batch.owners[index], batch.lines[index], f"rejected by InfluxDB: "
                        f"{reason}") for index, reason in rejected]
        if batch.dead and not self.dead.store(batch):
            self._hand_back(batch)       # stopping before the dead letters were stored
            return
        self._ack(batch)
        written = len(batch.lines) - len(rejected)
        metrics.POINTS_WRITTEN.inc(written)
        self._written += written

    def _wait_for(self, messages: list, future: Future) -> list[tuple[int, str]]:
        """The write's result; while InfluxDB is away the messages stay ours (in progress)."""
        told = time.monotonic()
        while True:
            HEARTBEAT.tick()
            try:
                return future.result(timeout=1.0)
            except FutureTimeout:
                if time.monotonic() - told >= self.nats.ack_wait / 3:
                    told = time.monotonic()
                    self._call_quietly(lambda: self._each(messages, "in_progress"),
                                       "in progress")

    def _ack(self, batch: Round) -> None:
        self._call_quietly(lambda: self._each(batch.messages, "ack"), "ack")

    def _hand_back(self, batch: Round) -> None:
        log.warning("stopping with %d points not written; JetStream delivers them again",
                    len(batch.lines))
        self._call_quietly(lambda: self._each(batch.messages, "nak"), "nak")

    async def _each(self, messages: list, action: str) -> None:
        for msg in messages:
            await getattr(msg, action)()
        await (await self.link.connection()).flush()

    def _call_quietly(self, function, what: str) -> None:
        """Acks are best effort: one lost means a redelivery, and the points are rewritten
        identically."""
        try:
            self.link.call(function, self.nats.connect_timeout * 2)
        except (TransientError, AccessDenied) as exc:
            log.warning("JetStream %s failed (%s); those messages are delivered again", what, exc)

    def _check_consumer(self) -> None:
        """When idle, every CONSUMER_CHECK_S: a consumer out of step with its stream (see
        ``stream.consumer_behind``) twice in a row is moved to another leader."""
        now = time.monotonic()
        if now - self._checked_at < CONSUMER_CHECK_S:
            return
        self._checked_at = now
        try:
            behind = self.link.call(self._consumer_behind, self.nats.connect_timeout * 2)
        except (TransientError, AccessDenied) as exc:
            log.debug("consumer check: %s", exc)
            return
        if behind is None or behind != self._behind:
            self._behind = behind
            return
        log.error("JetStream's consumer %s has nothing pending although stream %s holds "
                  "messages up to %d beyond the %d it delivered (its leader's copy of the stream "
                  "is behind); asking the consumer's leader to step down", self.nats.durable,
                  self.nats.stream, behind[0], behind[1])
        self._behind = None
        self._call_quietly(self._step_down, "leader step-down")

    async def _consumer_behind(self):
        return await stream.consumer_behind(await self.link.jetstream(), self.nats)

    async def _step_down(self) -> None:
        await stream.step_down_consumer(await self.link.connection(), self.nats)

    def _report_status(self) -> None:
        now = time.monotonic()
        if now - self._status_at < STATUS_EVERY_S:
            return
        if self._status_at:
            rate = self._written / (now - self._status_at)
            log.info("wrote %d points in %.0f s (%.0f points/s)", self._written,
                     now - self._status_at, rate)
        self._log_redelivered()
        self._status_at, self._written = now, 0

    def _log_redelivered(self) -> None:
        if self._redelivered:
            log.info("%d messages were delivered again by JetStream (a writer that took them "
                     "died, or their ack was lost); their points are rewritten identically",
                     self._redelivered)
            self._redelivered = 0


def run(config, stop) -> int:
    """``ha-ingestor write --from-nats``: until ``stop``. Returns EXIT_OK."""
    if not config.influxdb.url:
        raise ConfigError("influxdb.url is required by a central writer")
    writer = CentralWriter(config, stop)
    if config.metrics.enabled:
        metrics.serve(config.metrics.host, config.metrics.ports["central"], ready=writer.ready)
    log.info("central writer started: JetStream %s (stream %s, consumer %s) → InfluxDB %s, "
             "batch %d points", writer.link.servers, config.nats.stream, config.nats.durable,
             config.influxdb.url, config.influxdb.batch_size)
    writer.run()
    log.info("central writer stopped")
    return EXIT_OK
