"""``metrics.influxdb``: this process's own counters and gauges, written to InfluxDB every
``interval`` (like Telegraf's ``inputs.internal``), for those who chart InfluxDB rather than
scrape Prometheus.

One point per sample of the process's Prometheus registry: measurement = the metric's name as
``/metrics`` shows it (``ha_ingestor_events_written_total``), tags = its labels plus
``process`` (``mqtt``, ``ha``, ``writer``, ``run``: which process wrote it) and ``host``, one
float field ``value``.
Histograms give their ``_sum`` and ``_count``; ``_created`` samples are left out.

It never delays or endangers the events: a daemon thread with its own HTTP connection and a
short timeout, one request at a time, no retry and no buffer. A snapshot that cannot be written
is dropped and counted in ``ha_ingestor_metrics_export_dropped_total``; the next one starts
afresh.
"""

from __future__ import annotations

import base64
import http.client
import logging
import math
import socket
import threading
import time
import urllib.parse

from prometheus_client import REGISTRY, Counter

from ha_ingestor.tlsutil import client_context

log = logging.getLogger(__name__)

DROPPED = Counter("ha_ingestor_metrics_export_dropped_total",
                  "Snapshots of this process's metrics that could not be written to InfluxDB "
                  "(metrics.influxdb)", ["reason"])
EXPORTED = Counter("ha_ingestor_metrics_export_points_total",
                   "Points of this process's metrics written to InfluxDB (metrics.influxdb)")
_KEEP_PREFIXES = ("ha_ingestor_", "process_")
_ESCAPE = str.maketrans({"\\": "\\\\", " ": "\\ ", ",": "\\,", "=": "\\=", "\n": "\\n"})


def snapshot_lines(process: str, host: str, now_ns: int, registry=REGISTRY) -> list[str]:
    """This process's samples as line protocol, all at ``now_ns``."""
    lines = []
    for family in registry.collect():
        for sample in family.samples:
            name = sample.name
            if not name.startswith(_KEEP_PREFIXES) or name.endswith(("_created", "_bucket")) \
                    or not math.isfinite(sample.value):
                continue
            tags = {**sample.labels, "process": process, "host": host}
            tag_text = "".join(f",{_esc(k)}={_esc(v)}" for k, v in sorted(tags.items()) if v)
            lines.append(f"{_esc(name)}{tag_text} value={float(sample.value)!r} {now_ns}")
    return lines


def _esc(text: str) -> str:
    return str(text).translate(_ESCAPE)


class Target:
    """Where the points go: InfluxDB's v1 ``/write`` or v2 ``/api/v2/write``, with the
    ``influxdb:`` section's credentials and the ``metrics.influxdb`` overrides."""

    def __init__(self, influx, settings):
        url = urllib.parse.urlsplit(settings.url or influx.url)
        self.url = settings.url or influx.url
        self.https = url.scheme == "https"
        self.address = (url.hostname or "127.0.0.1", url.port or (443 if self.https else 8086))
        self.timeout = settings.timeout
        base = url.path.rstrip("/")
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if influx.api == "v2":
            params = {"org": influx.org or "-", "bucket": settings.bucket or influx.bucket,
                      "precision": "ns"}
            self.path = f"{base}/api/v2/write?{urllib.parse.urlencode(params)}"
            if influx.token:
                headers["Authorization"] = f"Token {influx.token}"
        else:
            params = {"db": settings.database or influx.database, "precision": "ns"}
            self.path = f"{base}/write?{urllib.parse.urlencode(params)}"
            if influx.username:
                auth = f"{influx.username}:{influx.password or ''}".encode()
                headers["Authorization"] = "Basic " + base64.b64encode(auth).decode()
        self.headers = headers
        self.ssl_context = client_context(influx.tls) if self.https else None

    def post(self, body: bytes) -> tuple[int, str]:
        """(HTTP status, InfluxDB's text); OSError when it cannot be reached."""
        if self.https:
            conn = http.client.HTTPSConnection(*self.address, timeout=self.timeout,
                                               context=self.ssl_context)
        else:
            conn = http.client.HTTPConnection(*self.address, timeout=self.timeout)
        try:
            conn.request("POST", self.path, body=body, headers=self.headers)
            response = conn.getresponse()
            return response.status, response.read(300).decode("utf-8", "replace").strip()
        except http.client.HTTPException as exc:
            raise OSError(str(exc) or type(exc).__name__) from None
        finally:
            conn.close()


class MetricsExporter:
    """``start()`` once; the thread writes a snapshot every ``interval`` until ``close()``
    (then one last one, so the final counts arrive)."""

    def __init__(self, config, component: str):
        self.settings = config.metrics.influxdb
        self.target = Target(config.influxdb, self.settings)
        self.component = component
        self.host = socket.gethostname()
        self._closing = threading.Event()
        self._failing: str | None = None
        self._thread = threading.Thread(target=self._run, name="metrics-influxdb", daemon=True)

    def start(self) -> "MetricsExporter":
        self._thread.start()
        log.info("writing this process's metrics to %s every %g s", self.target.url,
                 self.settings.interval)
        return self

    def close(self) -> None:
        """Write the last snapshot (waits at most the request timeout)."""
        self._closing.set()
        self._thread.join(self.settings.timeout + 1)

    def _run(self) -> None:
        while not self._closing.wait(self.settings.interval):
            self.export_once()
        self.export_once()

    def export_once(self) -> bool:
        """Write one snapshot; on any failure drop it and count why. Never raises."""
        try:
            lines = snapshot_lines(self.component, self.host, time.time_ns())
            status, text = self.target.post(("\n".join(lines) + "\n").encode("utf-8"))
            reason = None if status in (200, 204) else f"http_{status}"
        except OSError as exc:
            status, text, reason, lines = 0, str(exc), "unreachable", []
        except Exception as exc:  # a bug here must never reach the component
            status, text, reason, lines = 0, repr(exc), "error", []
        if reason is None:
            EXPORTED.inc(len(lines))
        else:
            DROPPED.labels(reason=reason).inc()
        self._log_change(reason, text)
        return reason is None

    def _log_change(self, reason: str | None, text: str) -> None:
        if reason == self._failing:
            return
        if reason is None:
            log.info("metrics reach InfluxDB at %s again", self.target.url)
        else:
            log.warning("cannot write this process's metrics to InfluxDB at %s (%s: %s); "
                        "dropping them until it works, events are not affected",
                        self.target.url, reason, text[:200])
        self._failing = reason


def start(config, component: str) -> MetricsExporter | None:
    """Start the exporter when ``metrics.influxdb.enabled``; None otherwise."""
    if not config.metrics.influxdb.enabled:
        return None
    return MetricsExporter(config, component).start()
