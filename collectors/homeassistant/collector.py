"""The Home Assistant collector: connect, subscribe, catch up, keep alive, reconnect.

Threads: the main thread runs the connection loop and the catch-up (backfill and resync requests,
restoring dropped state changes: catchup.py), a reader thread per connection hands frames to the
bounded hand-off, a keepalive thread pings, and the committer thread batches the hand-off into the
durable queue.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

from ha_ingestor import metrics
from ha_ingestor.backoff import Backoff
from ha_ingestor.config import Config
from ha_ingestor.envelope import HA, KIND_LIVE, unreadable_frame
from ha_ingestor.errors import AuthError, ConfigError, TransientError
from ha_ingestor.lifecycle import HEARTBEAT, StopFlag

from collectors.homeassistant.catchup import REQUEST_TIMEOUT_S, CatchUp
from collectors.homeassistant.committer import Committer
from collectors.homeassistant.connection import CommandError, HAConnection
from collectors.homeassistant.handoff import Handoff
from collectors.homeassistant.ledger import LiveLedger

log = logging.getLogger(__name__)

CATCHUP_CHUNK_MAX = 1000        # catch-up events handed on at once (twice that may wait)
DROP_LOG_EVERY_S = 10.0


class HACollector:
    def __init__(self, config: Config, stop: StopFlag):
        self.config = config
        self.ha = config.homeassistant
        self.stop = stop
        self.chunk = min(config.queue.batch_events, CATCHUP_CHUNK_MAX)
        self.handoff = Handoff(self.ha.handoff_max_events, self.ha.full_policy,
                               catchup_max=2 * self.chunk)
        self.ledger = LiveLedger()
        self.committer = Committer(config.queue, self.handoff)
        self.backoff = Backoff(base=0.5, factor=2.0, cap=30.0, jitter=0.2)
        self.connection: HAConnection | None = None
        self._subscribed: HAConnection | None = None   # once HA answered its subscription
        self._no_history_logged = False
        self._drops_logged_at = float("-inf")
        self._received = metrics.EVENTS_RECEIVED.labels(HA)
        self._dropped = metrics.EVENTS_DROPPED.labels(HA, self.ha.full_policy)
        self._connected = metrics.CONNECTED.labels("ha")

    # -- lifecycle ------------------------------------------------------------------------------
    def run(self) -> int:
        self.committer.start()
        self.committer.ready.wait()
        self._raise_committer_error()
        try:
            self._connection_loop()
        finally:
            self._disconnect("stopping")
            self.committer.stop(self.config.run.shutdown_timeout)
        self._raise_committer_error()
        dropped = f", {self.handoff.dropped} dropped" if self.handoff.dropped else ""
        log.info("stopped: %d events committed%s", self.committer.committed, dropped)
        return 0

    def ready(self) -> bool:
        """Subscribed (HA answered ``subscribe_events``, so every event HA fires from now on comes
        to us), connected, and the queue writable. The catch-up may still be running."""
        connection = self.connection
        return bool(connection is not None and connection is self._subscribed
                    and connection.alive() and self.committer.alive()
                    and not self.committer.full())

    def _raise_committer_error(self) -> None:
        if self.committer.error is not None:
            raise self.committer.error

    # -- connection loop ------------------------------------------------------------------------
    def _connection_loop(self) -> None:
        while not self.stop.is_set():
            began = time.monotonic()
            try:
                self._session()
            except TransientError as exc:
                if not self.stop.is_set():
                    log.warning("Home Assistant: %s", exc)
            finally:
                self._disconnect("session ended")
            self._raise_committer_error()
            if self.stop.is_set():
                return
            if time.monotonic() - began > max(30.0, self.ha.ping_interval * 2):
                self.backoff.reset()     # it had been up for a while: a fresh outage
            delay = self.backoff.next_delay()
            metrics.RECONNECTS.labels("ha").inc()
            log.info("reconnecting to %s in %.1f s", self.ha.url, delay)
            self.stop.wait(delay)

    def _session(self) -> None:
        connection = HAConnection(self.ha, self._on_events, self._on_unreadable)
        self.connection = connection
        connection.connect()
        version = connection.authenticate()
        connection.start_reader()
        self._start_keepalive(connection)
        self._request_coalescing(connection)
        catch_up = CatchUp(self.ha, self.chunk, self.committer, self.handoff, self.ledger,
                           self._request, lambda: self._check(connection), self._no_history)
        catch_up.begin()
        subscribed_at = time.time()
        self._subscribe(connection)
        self._subscribed = connection
        self._connected.set(1)
        log.info("connected to Home Assistant %s at %s; subscribed to %s", version, self.ha.url,
                 ", ".join(self.ha.event_types) or "all events")
        catch_up.after_connect(subscribed_at)
        while True:                       # until stopping or disconnected (TransientError)
            self._check(connection)
            if self.ledger.has_pending():
                catch_up.restore_dropped()
            self.stop.wait(0.2)

    def _check(self, connection: HAConnection) -> None:
        """Between steps on a connection (the main loop's heartbeat): report drops; raise what
        ends the connection."""
        HEARTBEAT.tick()
        self._raise_committer_error()
        self._report_drops()
        if self.stop.is_set():
            raise TransientError("stopping")
        if not connection.alive():
            raise TransientError(connection.close_reason or "connection closed")

    def _disconnect(self, reason: str) -> None:
        self._subscribed = None
        if self.connection is not None:
            self.connection.close(reason)
            self.connection = None
            self._connected.set(0)

    # -- handshake steps ------------------------------------------------------------------------
    def _request_coalescing(self, connection: HAConnection) -> None:
        try:
            connection.request({"type": "supported_features",
                                "features": {"coalesce_messages": 1}}, self.ha.ping_timeout)
        except CommandError as exc:   # an HA older than 2022.12: plain frames, fine
            log.info("Home Assistant does not take supported_features (%s)", exc.code)

    def _subscribe(self, connection: HAConnection) -> None:
        types = list(self.ha.event_types) or [None]
        futures = [connection.send({"type": "subscribe_events",
                                    **({"event_type": t} if t else {})})[1] for t in types]
        for event_type, future in zip(types, futures):
            try:
                self._await(future, "subscribe_events", REQUEST_TIMEOUT_S)
            except CommandError as exc:
                raise self._subscribe_error(event_type, exc) from exc

    @staticmethod
    def _subscribe_error(event_type: str | None, exc: CommandError) -> Exception:
        what = f"event type {event_type!r}" if event_type else "all event types"
        if exc.code == "unauthorized":
            return AuthError(
                f"Home Assistant refused to subscribe to {what}: the token's user is not an "
                f"administrator. Only an admin's token may subscribe to all events; create the "
                f"long-lived access token as an administrator (or list only allowed types such "
                f"as state_changed in homeassistant.event_types)")
        return ConfigError(f"Home Assistant refused to subscribe to {what}: {exc.code}: "
                           f"{exc.message} (homeassistant.event_types)")

    # -- events from the reader thread ----------------------------------------------------------
    def _on_events(self, events: list[dict], rx_ns: int) -> None:
        self._received.inc(len(events))
        envelopes = [{"src": HA, "rx": rx_ns, "kind": KIND_LIVE, "event": event}
                     for event in events]
        self.ledger.accepted(envelopes)          # seen before a backfill pass can read them
        dropped = self.handoff.put_live(envelopes)
        if dropped:
            self._dropped.inc(len(dropped))
            # the backlog that made them drop built up while the queue was full, or not
            backlog_from_full = self.committer.full_since(self.handoff.oldest_live_rx())
            if self.ledger.dropped_events(dropped, backlog_from_full):
                self.committer.hold()            # until they are restored from the recorder
                if not self.ledger.tracking:     # what waits and what comes is not restored
                    self.ledger.track(self.handoff.waiting_live())

    def _on_unreadable(self, frame: bytes | str, reason: str, rx_ns: int) -> None:
        """A frame that cannot be read as JSON: kept whole as a dead letter (reader thread)."""
        self.committer.dead_letter_later([(unreadable_frame(frame, reason, rx_ns), reason)])

    # -- requests and drops ---------------------------------------------------------------------
    def _request(self, message: dict, timeout: float):
        """A command from the main thread: waits for the result, a stop request or ``timeout``
        (a frozen HA is cut off sooner by the keepalive)."""
        connection = self.connection
        if connection is None:
            raise TransientError("not connected")
        return self._await(connection.send(message)[1], message["type"], timeout)

    def _await(self, future: Future, what: str, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            HEARTBEAT.tick()
            try:
                return future.result(0.1)
            except FutureTimeout:
                pass
            if self.stop.is_set():
                raise TransientError(f"stopping before the answer to {what}")
            if time.monotonic() > deadline:
                raise TransientError(f"no answer to {what} within {timeout:.0f} s")

    def _report_drops(self) -> None:
        """One log line for the drops since the last one, at most every DROP_LOG_EVERY_S."""
        now = time.monotonic()
        if now - self._drops_logged_at < DROP_LOG_EVERY_S:
            return
        report = self.ledger.take_report()
        if report is not None:
            log.error("%s", report.describe(self.ha.full_policy, self.handoff.dropped))
            self._drops_logged_at = now

    def _no_history(self, exc: CommandError) -> None:
        metrics.GAPS.inc()
        if not self._no_history_logged:
            self._no_history_logged = True
            log.warning("Home Assistant has no history/recorder integration (%s): state changes "
                        "fired while the collector was disconnected cannot be backfilled; add "
                        "recorder: and history: to HA's configuration", exc.code)

    # -- keepalive ------------------------------------------------------------------------------
    def _start_keepalive(self, connection: HAConnection) -> None:
        threading.Thread(target=self._keepalive, args=(connection,), name="ha-keepalive",
                         daemon=True).start()

    def _keepalive(self, connection: HAConnection) -> None:
        """A ping every ping_interval; no pong within ping_timeout means HA is frozen (or the
        network is gone without a reset): close, and the main loop reconnects."""
        while not connection.closed.wait(self.ha.ping_interval):
            started = time.monotonic()
            try:
                connection.request({"type": "ping"}, self.ha.ping_timeout)
            except TransientError as exc:
                if connection.alive():
                    log.warning("no pong from Home Assistant within %.0f s (%s): treating the "
                                "connection as dead", self.ha.ping_timeout, exc)
                    connection.close("no pong")
                return
            except CommandError:
                pass
            log.debug("pong after %.1f ms", (time.monotonic() - started) * 1000)

