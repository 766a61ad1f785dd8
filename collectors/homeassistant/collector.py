"""The Home Assistant collector: connect, subscribe, backfill, resync, keep alive, reconnect.

Threads: the main thread runs the connection loop (and the backfill/resync requests), a reader
thread per connection hands frames to the bounded hand-off, a keepalive thread pings, and the
committer thread batches the hand-off into the durable queue.
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
from ha_ingestor.envelope import HA, KIND_LIVE, KIND_RESYNC, state_as_event, unreadable_frame
from ha_ingestor.errors import AuthError, ConfigError, TransientError
from ha_ingestor.lifecycle import HEARTBEAT, StopFlag

from collectors.homeassistant.backfill import Backfill
from collectors.homeassistant.committer import Committer
from collectors.homeassistant.connection import CommandError, HAConnection
from collectors.homeassistant.handoff import Handoff

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 300.0       # history and get_states can be large; pings catch a frozen HA
GAP_CLOSE_TIMEOUT_S = 120.0     # waiting for the committer to make a backfill durable
GAP_OPEN_WAIT_S = 5.0           # waiting for the previous connection's events to be committed
BACKFILL_TRIES = 3


class HACollector:
    def __init__(self, config: Config, stop: StopFlag):
        self.config = config
        self.ha = config.homeassistant
        self.stop = stop
        self.handoff = Handoff(self.ha.handoff_max_events, self.ha.full_policy)
        self.committer = Committer(config.queue, self.handoff)
        self.backoff = Backoff(base=0.5, factor=2.0, cap=30.0, jitter=0.2)
        self.connection: HAConnection | None = None
        self.backfill: Backfill | None = None
        self._no_history_logged = False
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
        log.info("stopped: %d events committed, %d dropped", self.committer.committed,
                 self.handoff.dropped)
        return 0

    def ready(self) -> bool:
        return bool(self.connection and self.connection.alive() and self.committer.alive()
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
        self._open_gap()
        backfill = self._prepare_backfill()
        self._subscribe(connection)
        self._connected.set(1)
        log.info("connected to Home Assistant %s at %s; subscribed to %s", version, self.ha.url,
                 ", ".join(self.ha.event_types) or "all events")
        self._catch_up(connection, backfill)
        while not self.stop.is_set() and connection.alive():
            self.stop.wait(0.2)
            self._raise_committer_error()
        if not self.stop.is_set():
            raise TransientError(connection.close_reason or "connection closed")

    def _disconnect(self, reason: str) -> None:
        if self.connection is not None:
            self.connection.close(reason)
            self.connection = None
            self._connected.set(0)
        self.backfill = None

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
        backfill = self.backfill
        if backfill is not None:
            for event in events:
                if event["event_type"] == "state_changed":
                    entity_id = (event.get("data") or {}).get("entity_id")
                    backfill.seen.add((entity_id, event.get("time_fired")))
        envelopes = [{"src": HA, "rx": rx_ns, "kind": KIND_LIVE, "event": event}
                     for event in events]
        dropped = self.handoff.put_many(envelopes)
        if dropped:
            self._dropped.inc(dropped)

    def _on_unreadable(self, frame: bytes | str, reason: str, rx_ns: int) -> None:
        """A frame that cannot be read as JSON: kept whole as a dead letter (reader thread)."""
        self.committer.dead_letter_later([(unreadable_frame(frame, reason, rx_ns), reason)])

    # -- backfill and resync --------------------------------------------------------------------
    def _wants_states(self) -> bool:
        return not self.ha.event_types or "state_changed" in self.ha.event_types

    def _open_gap(self) -> None:
        """Mark where this connection's events begin, and let the previous connection's events
        finish committing first (briefly), so the backfill starts from their watermarks."""
        previous_committed = self.committer.open_gap_here()
        deadline = time.monotonic() + GAP_OPEN_WAIT_S
        while not previous_committed.wait(0.05):
            if self.stop.is_set() or time.monotonic() > deadline:
                return   # older watermarks are still a safe start (a few more rewrites)

    def _prepare_backfill(self) -> Backfill | None:
        """Set up before subscribing, so live events from the first one on are known to it."""
        marks = self.committer.persisted_marks()
        if not self.ha.backfill or not marks.newest or not self._wants_states():
            return None
        self.backfill = Backfill(self._request, marks, self.ha.backfill_margin, REQUEST_TIMEOUT_S)
        return self.backfill

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

    def _catch_up(self, connection: HAConnection, backfill: Backfill | None) -> None:
        """Backfill then resync, now; a second backfill pass once the recorder has committed
        what it held at the reconnect; then let the watermarks advance again."""
        subscribed_at = time.monotonic()
        if not self._wants_states():   # homeassistant.event_types leaves state changes out
            self._close_gap(None)
            return
        states = self._request({"type": "get_states"}, REQUEST_TIMEOUT_S) or []
        entity_ids = self._entity_ids(states, backfill)
        if backfill is not None and not self._first_pass(backfill, entity_ids):
            backfill = None
        self._store_resync(states)
        if backfill is not None and self.ha.backfill_margin > 0:
            if not self._wait_for_recorder(connection, subscribed_at + self.ha.backfill_margin):
                return   # stopping, or the connection is gone: the gap stays open
            self._backfill_pass(backfill, entity_ids)
        self._close_gap(backfill)

    @staticmethod
    def _entity_ids(states: list, backfill: Backfill | None) -> list[str]:
        """Every entity HA has now, plus those we committed before (they may be gone since)."""
        current = {s["entity_id"] for s in states if isinstance(s, dict) and "entity_id" in s}
        return sorted(current | set(backfill.marks.entities if backfill else ()))

    def _first_pass(self, backfill: Backfill, entity_ids: list[str]) -> bool:
        log.info("backfilling state changes since %s (%.0f s before the newest committed event; "
                 "gap %.0f s)", backfill.start_time().isoformat(), self.ha.backfill_margin,
                 backfill.gap_seconds() or 0)
        return self._backfill_pass(backfill, entity_ids)

    def _wait_for_recorder(self, connection: HAConnection, until: float) -> bool:
        """Give HA's recorder its commit interval; False if stopping or disconnected."""
        while time.monotonic() < until and connection.alive():
            if self.stop.wait(0.2):
                return False
        return connection.alive()

    def _backfill_pass(self, backfill: Backfill, entity_ids: list[str]) -> bool:
        """One pass; False when HA has no history (nothing more to try on this connection)."""
        for attempt in range(1, BACKFILL_TRIES + 1):
            try:
                count = backfill.run_pass(entity_ids, self._store_backfilled)
            except CommandError as exc:
                if exc.code == "unknown_command":
                    self._no_history(exc)
                    return False
                log.warning("backfill failed (%s), try %d of %d", exc, attempt, BACKFILL_TRIES)
                if self.stop.wait(2.0 * attempt):
                    return False
                continue
            if count:
                log.info("backfilled %d state changes from HA's recorder", count)
            return True
        metrics.GAPS.inc()
        log.error("could not backfill after %d tries: state changes fired while disconnected "
                  "may be missing", BACKFILL_TRIES)
        return False

    def _store_backfilled(self, envelopes: list[dict]) -> None:
        self.handoff.put_many(envelopes, force=True)
        metrics.BACKFILLED.inc(len(envelopes))

    def _no_history(self, exc: CommandError) -> None:
        metrics.GAPS.inc()
        if not self._no_history_logged:
            self._no_history_logged = True
            log.warning("Home Assistant has no history/recorder integration (%s): state changes "
                        "fired while the collector was disconnected cannot be backfilled; add "
                        "recorder: and history: to HA's configuration", exc.code)

    def _store_resync(self, states: list[dict]) -> None:
        envelopes = [state_as_event(state, KIND_RESYNC) for state in states
                     if isinstance(state, dict) and state.get("entity_id")
                     and state.get("last_updated")]
        if envelopes:
            self.handoff.put_many(envelopes, force=True)
            metrics.RESYNCED.inc(len(envelopes))
        log.info("resync: stored the current state of %d entities", len(envelopes))

    def _close_gap(self, backfill: Backfill | None) -> None:
        done = self.committer.close_gap_after_queued()
        deadline = time.monotonic() + GAP_CLOSE_TIMEOUT_S
        while not done.wait(0.2):
            HEARTBEAT.tick()
            if self.stop.is_set() or time.monotonic() > deadline or not self.committer.alive():
                return
        if backfill is not None and backfill.stored:
            log.info("gap closed: %d backfilled state changes are durable", backfill.stored)
        self.backfill = None

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

