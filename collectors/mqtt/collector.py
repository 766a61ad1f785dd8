"""The MQTT collector: the network thread (this module) and the committer thread (committer.py).

Network thread: runs paho's I/O through paho's external-loop API (``socket()``, ``loop_read()``,
``loop_write()``, ``loop_misc()``), so every paho call happens in this one thread and reading can
be paused. ``on_message`` only appends (receive time, message) to a list; after each burst of
reads the list goes to the inbox. Acknowledgements come back from the committer after the batch is
durable and are sent here (paho's ``manual_ack``; a batch's PUBACKs in one write).

paho does not limit what it reads with ``manual_ack``: the broker does. It keeps at most its
in-flight window of unacknowledged QoS 1 messages on the wire to us (Mosquitto:
``max_inflight_messages``, default 20, for MQTT 3.1.1; the Receive Maximum we send for MQTT 5),
then waits for our PUBACKs. So not acknowledging is what pauses the broker, and the inbox bound
(``room()``) is what pauses our reading when messages arrive without flow control (QoS 0).
"""

from __future__ import annotations

import gc
import logging
import select
import socket
import time

import paho.mqtt.client as mqtt

from ha_ingestor import metrics
from ha_ingestor.backoff import Backoff
from ha_ingestor.envelope import MQTT
from ha_ingestor.errors import EXIT_OK, AuthError
from ha_ingestor.lifecycle import HEARTBEAT

from collectors.mqtt import buffered, session, subscriptions
from collectors.mqtt.committer import Committer
from collectors.mqtt.inbox import Inbox
from collectors.mqtt.subscriptions import Subscriptions

log = logging.getLogger("collectors.mqtt")

CONNACK_TIMEOUT_S = 10.0
BURST_PACKETS = 256            # packets read per select() wake-up before servicing the rest
BATCH_BYTES = 8 * 1024 * 1024  # payload bytes per batch (large payloads make small batches)
HELD_BYTES = 32 * 1024 * 1024  # stop reading while this much payload waits for a commit
MIN_HELD = 4_000               # messages held before reading pauses (above usual broker windows)
GC_THRESHOLD = 20_000         # allocations between young-generation collections (default 700)
STOP_FLUSH_S = 10.0            # on stop: how long to wait for the last batch to commit


class MqttCollector:
    """One persistent MQTT session into the ``mqtt`` queue; ``run()`` until ``stop`` is set."""

    def __init__(self, config, stop):
        self.config = config
        self.mqtt = config.mqtt
        self.stop = stop
        session.check_config(self.mqtt)
        self.qos = session.subscription_qos(self.mqtt.qos)
        batch_events = config.queue.batch_events
        v311 = str(self.mqtt.protocol) == "3.1.1"
        self._v5 = not v311
        self.inbox = Inbox(batch_events, config.queue.batch_interval, BATCH_BYTES,
                           max_held=max(MIN_HELD, 2 * batch_events
                                        + session.receive_maximum(batch_events)),
                           max_held_bytes=HELD_BYTES, commit_on_stall=v311 and self.qos > 0)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.committer = Committer(config, self.inbox, self._wake)
        self.client = session.make_client(self.mqtt, batch_events)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_unsubscribe = self._on_unsubscribe
        self.backoff = Backoff(base=0.5, factor=2.0, cap=30.0)
        self.where = f"{self.mqtt.host}:{self.mqtt.port}"
        self.connected = False
        self.connecting_since: float | None = None
        self.fatal: BaseException | None = None
        self._rx: list = []
        self.subscriptions: Subscriptions | None = None   # once the queue file is open
        self._ever_connected = False
        self._outage_logged = False
        self._failed_attempts = 0
        self._retry_at = 0.0
        self._paused_since: float | None = None
        self._pausing = False
        self._refused: str | None = None
        self._connected_gauge = metrics.CONNECTED.labels(component=MQTT)
        self._received = metrics.EVENTS_RECEIVED.labels(source=MQTT)
        self._reconnects = metrics.RECONNECTS.labels(component=MQTT)

    # --- the main loop -------------------------------------------------------------------------

    def run(self) -> int:
        server = None
        # Thousands of messages and envelopes are alive between receive and commit; with the
        # default thresholds the cyclic GC rescans them all many times a second. They are freed
        # by reference counting; collect far less often.
        gc.set_threshold(GC_THRESHOLD, 50, 50)
        self._connected_gauge.set(0)
        self.committer.start()
        self.committer.ready.wait()
        self._raise_if_failed()
        self.subscriptions = Subscriptions(
            self.where, self.mqtt.client_id, self.qos, self.mqtt.topics, self._v5,
            self.committer.stored_subscriptions,
            lambda value: self.committer.save_meta(subscriptions.META_KEY, value))
        if self.config.metrics.enabled:
            server = metrics.serve(self.config.metrics.host,
                                   self.config.metrics.ports.get(MQTT, 0), self.ready)
        try:
            while not self.stop.is_set():
                HEARTBEAT.tick()
                self._raise_if_failed()
                if self.client.socket() is None:
                    self._connect_with_backoff()
                else:
                    reading = self.inbox.room()
                    self._pump(reading)
                    self._pause_session(reading)
            self._shutdown()
        except BaseException:
            self.committer.abort()
            raise
        finally:
            self._close_socket()
            self._connected_gauge.set(0)
            self.committer.join(5.0)
            if server is not None:
                server.shutdown()
                server.server_close()
            self._wake_r.close()
            self._wake_w.close()
        return EXIT_OK

    def ready(self) -> bool:
        return self.connected and not self.committer.full

    def _raise_if_failed(self) -> None:
        if self.fatal is not None:
            raise self.fatal
        if self.committer.error is not None:
            raise self.committer.error
        if not self.committer.alive and not self.stop.is_set():
            raise RuntimeError("the MQTT committer thread stopped unexpectedly")

    def _pump(self, reading: bool, timeout: float = 1.0) -> None:
        """One select() round: acks from the committer, reads, writes, keepalive."""
        sock = self.client.socket()
        if self.connecting_since is not None:
            reading = True  # the CONNACK
            if time.monotonic() - self.connecting_since > CONNACK_TIMEOUT_S:
                self._connect_failed(f"no CONNACK within {CONNACK_TIMEOUT_S:.0f} s")
                return
        rlist = [self._wake_r, sock] if reading else [self._wake_r]
        wlist = [sock] if self.client.want_write() else []
        pending = reading and sock.pending()
        readable, writable, _ = select.select(rlist, wlist, [], 0 if pending else timeout)
        if self._wake_r in readable:
            self._drain_wake()
        self._send_acks()
        if pending or sock in readable:
            self._read_burst(sock)
        if self.client.socket() is not None and self.client.want_write():
            self.client.loop_write()
        if self.client.socket() is not None:
            self.client.loop_misc()

    def _pause_session(self, reading: bool) -> None:
        """Not reading for a while because the queue is full: disconnect cleanly rather than
        let the keepalive expire. The broker keeps the session and every QoS 1 message; we
        reconnect once the queue has space."""
        if reading or not self.committer.full or not self.connected:
            self._paused_since = None
            return
        now = time.monotonic()
        if self._paused_since is None:
            self._paused_since = now
        elif now - self._paused_since > self.mqtt.keepalive / 2:
            log.warning("queue still full: disconnecting from MQTT broker %s until it has "
                        "space (the broker keeps the session and its QoS 1 messages)", self.where)
            self._paused_since = None
            self._pausing = True
            self.client.disconnect()
            if self.client.socket() is not None and self.client.want_write():
                self.client.loop_write()
            self._close_socket()
            if self.connected:   # paho did not report the disconnect (nothing was written)
                self._on_disconnect(self.client, None, None, "paused", None)

    def _read_burst(self, sock) -> None:
        """Read packets while they keep coming. A read that yields no message (the socket is
        empty, a packet is incomplete, or it was not a PUBLISH) ends the burst."""
        client, rx = self.client, self._rx
        room = self.inbox.max_held - self.inbox.held
        loop_read, ok = client.loop_read, mqtt.MQTT_ERR_SUCCESS
        for _ in range(BURST_PACKETS):
            before = len(rx)
            if loop_read() != ok or len(rx) == before or len(rx) >= room:
                break
        drained = client.socket() is sock and not sock.pending() and \
            not select.select([sock], [], [], 0)[0]
        if rx:
            self._received.inc(len(rx))
            self.inbox.put(rx, drained)
            rx.clear()

    def _on_message(self, _client, _userdata, message, _now=time.time_ns) -> None:
        # MQTT 5: paho gives every message a Properties object (two dicts, a few KiB) that we do
        # not store; let it go now rather than while the message waits for its commit.
        message.properties = None
        self._rx.append((_now(), message))

    def _send_acks(self) -> None:
        acks = self.committer.acks
        while acks:
            generation, mids, fingerprints = acks.popleft()
            if generation != self.inbox.generation or not self.connected:
                # A packet id means something only on its own connection: the broker re-sends
                # these; the committer recognises the copies.
                self.committer.dropped.append(fingerprints)
                continue
            session.ack_all(self.client, mids)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already awake, or shutting down

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    # --- connection ------------------------------------------------------------------------------

    def _connect_with_backoff(self) -> None:
        """Wait out the backoff delay, then open the connection (CONNACK comes through _pump)."""
        wait = self._retry_at - time.monotonic()
        if wait > 0 or self.committer.full:
            # While the queue is full, reconnecting would only fill memory with messages we
            # cannot commit; the broker keeps them in the session.
            self.stop.wait(min(wait, 0.5) if wait > 0 else 0.5)
            self._drain_wake()
            self._send_acks()
            return
        if not self.subscriptions.ready_to_connect():
            self.stop.wait(0.05)      # the committer is writing the subscription record
            return
        try:
            session.connect(self.client, self.mqtt, self.config.queue.batch_events)
        except (OSError, ValueError) as err:
            self._connect_failed(str(err) or type(err).__name__)
            return
        self.subscriptions.connect_sent()
        buffered.install(self.client)
        self.connecting_since = time.monotonic()

    def _connect_failed(self, why: str) -> None:
        """One failed attempt: log the outage once, then only at debug level; schedule the next."""
        self._close_socket()
        self.connecting_since = None
        self._failed_attempts += 1
        self._reconnects.inc()
        delay = self.backoff.next_delay()
        self._retry_at = time.monotonic() + delay
        if not self._outage_logged:
            self._outage_logged = True
            log.warning("cannot connect to MQTT broker %s: %s; retrying with backoff (up to "
                        "%.0f s between attempts)", self.where, why, self.backoff.cap)
        else:
            log.debug("connect attempt %d to %s failed: %s; next in %.1f s",
                      self._failed_attempts, self.where, why, delay)

    def _on_connect(self, client, _userdata, flags, reason_code, _properties) -> None:
        self.connecting_since = None
        if reason_code.is_failure:
            refusal = session.connack_refusal(reason_code, self.where)
            if refusal is not None:
                self.fatal = refusal
            else:
                self._refused = str(reason_code)
            return
        self.connected = True
        self._connected_gauge.set(1)
        self.backoff.reset()
        after = f" after {self._failed_attempts} failed attempt(s)" if self._failed_attempts else ""
        log.info("connected to MQTT broker %s as %r (MQTT %s, session present: %s)%s",
                 self.where, self.mqtt.client_id, self.mqtt.protocol,
                 "yes" if flags.session_present else "no", after)
        if not flags.session_present:
            self.committer.dropped.append(None)   # nothing will be re-sent
        if self._ever_connected and not flags.session_present:
            log.warning("the broker had no session for %r: messages published while we were "
                        "away are lost (broker restarted without persistence, or the session "
                        "expired)", self.mqtt.client_id)
        self._ever_connected = True
        self._outage_logged = False
        self._failed_attempts = 0
        self.subscriptions.send(client, self.subscriptions.on_connack(flags.session_present))

    def _on_subscribe(self, _client, _userdata, mid, reason_codes, _properties) -> None:
        refused = self.subscriptions.on_suback(mid, reason_codes)
        if refused:
            self.fatal = AuthError(f"MQTT broker {self.where} refused the subscription to "
                                   f"{', '.join(refused)}: not authorised for these topics "
                                   f"(check the broker's ACL for mqtt.username)")

    def _on_unsubscribe(self, _client, _userdata, mid, _reason_codes, _properties) -> None:
        self.subscriptions.on_unsuback(mid)

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, _properties) -> None:
        """Runs inside paho's read/write/keepalive calls: record the state, nothing slow."""
        was_connected, self.connected = self.connected, False
        self._connected_gauge.set(0)
        # Messages of this burst not yet in the inbox belong to the lost connection too: their
        # packet ids must never be acknowledged on the next one (in place: _read_burst holds it).
        unread = [item for item in self._rx if not item[1].qos]
        dropped = len(self._rx) - len(unread) + self.inbox.discard_unacked()
        self._rx[:] = unread
        if self.fatal is not None:   # refused for good: the main loop raises it
            return
        if self._pausing or (self.stop.is_set() and was_connected):
            self._pausing = False
            self._outage_logged = True    # the pause was logged; no line per attempt
            return
        if not was_connected:  # refused at CONNACK, or the socket failed before it
            self._connect_failed(self._refused or str(reason_code))
            self._refused = None
            return
        self.connecting_since = None
        self._outage_logged = True
        self._reconnects.inc()
        self._retry_at = time.monotonic() + self.backoff.next_delay()
        log.warning("lost connection to MQTT broker %s (%s); reconnecting with backoff%s",
                    self.where, reason_code,
                    f"; {dropped} uncommitted message(s) will be re-sent by the broker"
                    if dropped else "")

    def _close_socket(self) -> None:
        sock = self.client.socket()
        if sock is not None:
            try:
                self.client._sock_close()
            except Exception:  # noqa: BLE001 - closing a broken socket
                pass

    # --- stop ----------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Commit and acknowledge what we hold, then disconnect cleanly."""
        self._flush_reads()
        if self.committer.full:
            self.committer.abort()
        self.inbox.close()
        deadline = time.monotonic() + STOP_FLUSH_S
        while self.committer.alive and time.monotonic() < deadline and \
                self.client.socket() is not None:
            if self.committer.full:
                self.committer.abort()
            self._pump(reading=False, timeout=0.1)
        self._raise_if_failed()
        self._send_acks()
        if self.committer.abandoned:
            log.warning("stopped with %d QoS 0 message(s) not committed (queue full)",
                        self.committer.abandoned)
        if self.client.socket() is not None and self.connected:
            self.client.disconnect()
            deadline = time.monotonic() + 2.0
            while self.client.socket() is not None and self.client.want_write() and \
                    time.monotonic() < deadline:
                self.client.loop_write()
            log.info("disconnected from MQTT broker %s", self.where)

    def _flush_reads(self) -> None:
        """Hand what paho already parsed to the inbox (nothing is left in ``_rx`` between bursts,
        but an exception mid-burst could leave some)."""
        if self._rx:
            self.inbox.put(self._rx, True)
            self._rx = []


def run(config, stop) -> int:
    """Entry point for ``ha-ingestor collect mqtt``: runs until ``stop`` is set; returns EXIT_OK.
    Raises AuthError (refused credentials or client id), ConfigError, QueueError.
    ``mqtt.enabled`` is for ``ha-ingestor run``; asked for explicitly, the collector runs."""
    return MqttCollector(config, stop).run()
