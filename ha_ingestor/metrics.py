"""Prometheus metrics and the /metrics, /healthz and /readyz endpoints every process serves.

All metric objects live here so that names and labels agree across processes. Labels: ``source``
is ``mqtt`` or ``ha``; ``component`` is ``mqtt``, ``ha`` or ``writer``.

``/healthz`` says whether the process's main loop still makes progress: 503 once its heartbeat
(``ha_ingestor.lifecycle.HEARTBEAT``) has not ticked for ``run.stall_timeout``. ``/readyz`` says
whether it can do its job now (connected, queue writable).
"""

from __future__ import annotations

import logging
import platform
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from ha_ingestor import __version__
from ha_ingestor.lifecycle import HEARTBEAT

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# Collectors
EVENTS_RECEIVED = Counter("ha_ingestor_events_received_total",
                          "Messages/events received from the source", ["source"])
EVENTS_COMMITTED = Counter("ha_ingestor_events_committed_total",
                           "Events committed durably to the queue", ["source"])
BATCHES_COMMITTED = Counter("ha_ingestor_batches_committed_total",
                            "Queue items (batches) committed", ["source"])
COMMIT_LATENCY = Histogram("ha_ingestor_commit_latency_seconds",
                           "Time from receiving an event to its batch being durable", ["source"],
                           buckets=_LATENCY_BUCKETS)
EVENTS_DROPPED = Counter("ha_ingestor_events_dropped_total",
                         "Events dropped by policy (HA collector with a full queue)",
                         ["source", "reason"])
EVENTS_INVALID = Counter("ha_ingestor_invalid_frames_total",
                         "Malformed frames or unknown message types received", ["source", "kind"])
BACKFILLED = Counter("ha_ingestor_ha_backfilled_total",
                     "State changes read back from HA's recorder after a reconnect")
RESYNCED = Counter("ha_ingestor_ha_resync_states_total", "States stored from get_states snapshots")
GAPS = Counter("ha_ingestor_ha_unfillable_gaps_total",
               "Reconnects after which missed events could not be backfilled")
HA_RESTORED = Counter("ha_ingestor_ha_restored_total",
                      "Dropped state changes restored from HA's recorder")
HA_LOST = Counter("ha_ingestor_ha_lost_events_total",
                  "Dropped events that cannot be restored (events other than state changes: HA "
                  "keeps no history of them)")

# Shared
DEAD_LETTERS = Counter("ha_ingestor_dead_letters_total",
                       "Events moved to the dead-letter store", ["source", "reason"])
SECRETS_WITHHELD = Counter("ha_ingestor_secrets_withheld_total",
                           "Event data keys not written because schema.events.secret_keys "
                           "lists them", ["source"])
RECONNECTS = Counter("ha_ingestor_reconnects_total", "Reconnect attempts", ["component"])
CONNECTED = Gauge("ha_ingestor_connected",
                  "1 while connected to the source (collectors) or the sink (writer)",
                  ["component"])
QUEUE_FULL = Gauge("ha_ingestor_queue_full", "1 while the queue is at queue.max_bytes",
                   ["source"])
QUEUE_READY = Gauge("ha_ingestor_queue_ready_events", "Events waiting in the queue", ["source"])
QUEUE_IN_FLIGHT = Gauge("ha_ingestor_queue_in_flight_events",
                        "Events taken by the writer, not yet acknowledged", ["source"])
QUEUE_DEAD = Gauge("ha_ingestor_queue_dead_letters", "Events in the dead-letter store",
                   ["source"])
QUEUE_OLDEST_AGE = Gauge("ha_ingestor_queue_oldest_age_seconds",
                         "Age of the oldest unacknowledged event", ["source"])
QUEUE_BYTES = Gauge("ha_ingestor_queue_bytes", "Bytes used by the queue file", ["source"])
QUEUE_DISK_FULL = Counter("ha_ingestor_queue_disk_full_total",
                          "Queue operations the full filesystem refused, retried after a backoff",
                          ["source", "operation"])

# Writer
POINTS_WRITTEN = Counter("ha_ingestor_points_written_total", "Points InfluxDB accepted")
EVENTS_WRITTEN = Counter("ha_ingestor_events_written_total",
                         "Queue events acknowledged after InfluxDB accepted their points",
                         ["source"])
WRITE_LATENCY = Histogram("ha_ingestor_write_latency_seconds", "Duration of one InfluxDB write",
                          buckets=_LATENCY_BUCKETS)
WRITE_RETRIES = Counter("ha_ingestor_write_retries_total", "InfluxDB writes retried", ["reason"])
INFLUX_UP = Gauge("ha_ingestor_influxdb_up", "1 when the last InfluxDB write succeeded")
ITEMS_MOVED_ASIDE = Counter("ha_ingestor_items_moved_aside_total",
                            "Queue items moved to the dead-letter store after they crashed the "
                            "writer queue.move_aside_after times in a row", ["source"])

# Every process
BUILD_INFO = Gauge("ha_ingestor_build_info",
                   "Always 1; the labels name the release and Python this process runs",
                   ["version", "python", "component"])

# Supervisor (ha-ingestor run)
CHILD_UP = Gauge("ha_ingestor_child_up", "1 while the supervised component's process runs",
                 ["component"])
CHILD_RESTARTS = Counter("ha_ingestor_child_restarts_total",
                         "Times the supervisor restarted a component that exited", ["component"])
CHILD_STALLS = Counter("ha_ingestor_child_stalls_total",
                       "Times the supervisor killed a component whose main loop stopped ticking "
                       "for run.stall_timeout", ["component"])


def set_build_info(component: str) -> None:
    BUILD_INFO.labels(version=__version__, python=platform.python_version(),
                      component=component).set(1)


# Counters by name, for counts a helper process (the writer's converter) makes on a process's
# behalf: it reports what changed (``counter_changes``) and the process adds it (``add_counts``).
_COUNTERS = {c._name: c for c in list(globals().values()) if isinstance(c, Counter)}
Counts = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def counter_values() -> Counts:
    """Every counter of this process: (name, labels) → value."""
    return {(name, tuple(sorted(sample.labels.items()))): sample.value
            for name, counter in _COUNTERS.items()
            for sample in counter.collect()[0].samples if sample.name.endswith("_total")}


def counter_changes(before: Counts) -> tuple[Counts, list[tuple[str, dict, float]]]:
    """The counters now, and what changed since ``before``: (name, labels, increase)."""
    now = counter_values()
    return now, [(name, dict(labels), value - before.get((name, labels), 0.0))
                 for (name, labels), value in now.items()
                 if value != before.get((name, labels), 0.0)]


def add_counts(changes: list[tuple[str, dict, float]]) -> None:
    """Add what another process counted for this one (``counter_changes``)."""
    for name, labels, increase in changes:
        counter = _COUNTERS[name]
        (counter.labels(**labels) if labels else counter).inc(increase)


class _Handler(BaseHTTPRequestHandler):
    ready: Callable[[], bool] = staticmethod(lambda: True)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            age = HEARTBEAT.age()
            if age > HEARTBEAT.timeout:
                self._send(503, f"stalled: the main loop has not ticked for {age:.0f} s "
                                f"(run.stall_timeout {HEARTBEAT.timeout:g} s)\n".encode())
            else:
                self._send(200, b"ok\n")
        elif path == "/readyz":
            ok = self._is_ready()
            self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
        else:
            self._send(404, b"not found\n")

    def _is_ready(self) -> bool:
        try:
            return bool(type(self).ready())
        except Exception:  # a failing readiness check means not ready, never a 500
            log.exception("readiness check failed")
            return False

    def _send(self, status: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args) -> None:  # no line per scrape
        pass


def serve(host: str, port: int, ready: Callable[[], bool]) -> ThreadingHTTPServer:
    """Serve /metrics, /healthz and /readyz on ``host:port`` from a daemon thread.

    ``ready()`` answers /readyz: connected to the source or sink and the queue writable. Port 0
    disables the endpoint (returns None)."""
    if not port:
        return None
    handler = type("Handler", (_Handler,), {"ready": staticmethod(ready)})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics", host, port)
    return server
