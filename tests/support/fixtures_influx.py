"""Pytest plugin: real InfluxDB 1.6.7 (Debian's ``influxd``) and VictoriaMetrics servers.

Each server runs on free loopback ports with every byte of its data in the test's tmp folder, and
is stopped by pid. ``influxdb`` answers ``.query(q, db)`` with the parsed rows, ``victoriametrics``
``.export(match)`` with the stored samples.
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.support import procs

INFLUXD_CONFIG = """\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{root}/meta"
  logging-enabled = false

[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  query-log-enabled = false
  max-values-per-tag = 0
  max-series-per-database = 0

[monitor]
  store-enabled = false

[continuous_queries]
  enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{http_port}"
  auth-enabled = {auth}
  https-enabled = {https}
  https-certificate = "{cert}"
  https-private-key = "{key}"
  log-enabled = false
  pprof-enabled = false
  max-body-size = {max_body_size}

[logging]
  level = "warn"
"""


def make_tls_files(folder: Path) -> tuple[str, str, str]:
    """A test CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key) paths."""
    openssl = procs.require_binary("openssl", "openssl")
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (str(folder / n) for n in
                                  ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    ext = folder / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for argv in (
            ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
             "-days", "2", "-subj", "/CN=ha-ingestor test CA"],
            ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
             "-subj", "/CN=127.0.0.1"],
            ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
             "-out", cert, "-days", "2", "-extfile", str(ext)]):
        subprocess.run([openssl, *argv], check=True, capture_output=True)
    return ca, cert, key


def _http(method: str, url: str, data: bytes | None = None, headers: dict | None = None,
          timeout: float = 30.0, cafile: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    context = ssl.create_default_context(cafile=cafile) if url.startswith("https") else None
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class InfluxServer:
    """One ``influxd`` process. ``stop()``/``start()`` keep the data; ``kill()`` is SIGKILL."""

    def __init__(self, root: Path, auth: bool = False, admin: tuple[str, str] = ("admin", "admin"),
                 max_body_size: int = 25_000_000, tls: bool = False):
        self.binary = procs.require_binary("influxd", "influxdb")
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.auth = auth
        self.admin = admin
        self.ca_file = cert = key = None
        if tls:
            self.ca_file, cert, key = make_tls_files(root / "tls")
        self.config_path = root / "influxdb.conf"
        self.log_path = root / "influxd.log"
        self.proc: subprocess.Popen | None = None
        self._settings = dict(root=root, auth="true" if auth else "false",
                              max_body_size=max_body_size, https="true" if tls else "false",
                              cert=cert or "", key=key or "")
        self._choose_ports()
        self._started = False

    def _choose_ports(self) -> None:
        self.port, self.rpc_port = procs.free_port(), procs.free_port()
        self.url = f"{'https' if self.ca_file else 'http'}://127.0.0.1:{self.port}"
        self.config_path.write_text(INFLUXD_CONFIG.format(
            http_port=self.port, rpc_port=self.rpc_port, **self._settings))

    def start(self) -> "InfluxServer":
        """Start influxd. At the first start a port taken between choosing it and influxd
        binding it (another process's) is chosen again; a restart keeps its ports."""
        for _attempt in range(3):
            self.proc = procs.start_process([self.binary, "-config", str(self.config_path)],
                                            self.log_path)
            try:
                procs.wait_until(lambda: self.proc.poll() is not None or self.ping(), 30,
                                 f"influxd on port {self.port}", interval=0.1)
            except TimeoutError as exc:
                raise TimeoutError(f"{exc}\n{procs.tail(self.log_path)}") from None
            if self.proc.poll() is None:
                break
            if self._started or "address already in use" not in self.log_path.read_text():
                raise RuntimeError(f"influxd exited with {self.proc.returncode}:\n"
                                   f"{procs.tail(self.log_path)}")
            self._choose_ports()
        else:
            raise RuntimeError(f"influxd found no free port:\n{procs.tail(self.log_path)}")
        self._started = True
        if self.auth and not getattr(self, "_admin_created", False):
            self._raw_query(f"CREATE USER \"{self.admin[0]}\" WITH PASSWORD "
                            f"'{self.admin[1]}' WITH ALL PRIVILEGES", auth=False)
            self._admin_created = True
        return self

    def stop(self) -> None:
        procs.stop_process(self.proc, timeout=20)

    def kill(self) -> None:
        if self.proc is not None:
            procs.kill_process(self.proc)

    def ping(self) -> bool:
        try:
            return _http("GET", f"{self.url}/ping", timeout=1, cafile=self.ca_file)[0] == 204
        except OSError:
            return False

    def _auth_headers(self, auth: bool = True) -> dict:
        if not (self.auth and auth):
            return {}
        token = base64.b64encode(f"{self.admin[0]}:{self.admin[1]}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def _raw_query(self, q: str, db: str | None = None, auth: bool = True) -> dict:
        params = {"q": q, "epoch": "ns"}
        if db:
            params["db"] = db
        status, body = _http("POST", f"{self.url}/query",
                             data=urllib.parse.urlencode(params).encode(),
                             headers={"Content-Type": "application/x-www-form-urlencoded",
                                      **self._auth_headers(auth)}, cafile=self.ca_file)
        result = json.loads(body or b"{}")
        if status != 200 or "error" in result:
            raise RuntimeError(f"InfluxQL {q!r} failed ({status}): {body[:300]!r}")
        for statement in result.get("results", []):
            if "error" in statement:
                raise RuntimeError(f"InfluxQL {q!r}: {statement['error']}")
        return result

    def query(self, q: str, db: str | None = None) -> list[dict]:
        """Rows of every series of the first statement, as dicts (column -> value), each with
        the series' ``name`` (measurement) and tags merged in under ``_measurement``/``tags``."""
        result = self._raw_query(q, db)
        rows = []
        for series in result["results"][0].get("series", []):
            for values in series.get("values", []):
                row = dict(zip(series["columns"], values))
                row["_measurement"] = series.get("name")
                if series.get("tags"):
                    row["_tags"] = series["tags"]
                rows.append(row)
        return rows

    def series_counts(self, db: str) -> dict[tuple, int]:
        """Points per series: {(measurement, ((tag, value), ...)): count}. Every point is counted
        once, whichever fields it has (InfluxDB itself keeps one point per series and time)."""
        counts: dict[tuple, int] = {}
        for measurement in [row["name"] for row in self.query("SHOW MEASUREMENTS", db)]:
            name = measurement.replace("\\", "\\\\").replace('"', '\\"')
            result = self._raw_query(f'SELECT * FROM "{name}" GROUP BY *', db)
            for series in result["results"][0].get("series", []):
                key = (measurement, tuple(sorted((series.get("tags") or {}).items())))
                counts[key] = counts.get(key, 0) + len(series.get("values", []))
        return counts

    def points(self, db: str) -> int:
        """Total number of points in ``db``."""
        return sum(self.series_counts(db).values())

    def points_fast(self, db: str) -> int:
        """Points in ``db`` by ``count(*)``: per measurement the largest field count. Exact when
        some field is in every point of a measurement (``value``, ``fired``, ...); for millions of
        points, where ``points()`` would fetch every row."""
        total = 0
        for row in self.query("SELECT count(*) FROM /.*/", db):
            total += max((v for k, v in row.items() if k.startswith("count_") and v), default=0)
        return total

    def create_database(self, name: str) -> None:
        self._raw_query(f'CREATE DATABASE "{name}"')

    def write(self, db: str, lines: str | bytes) -> None:
        """Post line protocol directly (test setup, e.g. an existing field type)."""
        data = lines.encode() if isinstance(lines, str) else lines
        status, body = _http("POST", f"{self.url}/write?db={urllib.parse.quote(db)}&precision=ns",
                             data=data, headers=self._auth_headers(), cafile=self.ca_file)
        if status != 204:
            raise RuntimeError(f"write failed ({status}): {body[:300]!r}")


class VictoriaMetricsServer:
    """One ``victoria-metrics`` single-node process with its storage in tmp."""

    def __init__(self, root: Path, tls: bool = False):
        self.binary = procs.require_binary("victoria-metrics", "victoria-metrics")
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = procs.free_port()
        self.ca_file = self._cert = self._key = None
        if tls:
            self.ca_file, self._cert, self._key = make_tls_files(root / "tls")
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.log_path = root / "victoria-metrics.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "VictoriaMetricsServer":
        self.proc = procs.start_process(
            [self.binary, f"-httpListenAddr=127.0.0.1:{self.port}",
             f"-storageDataPath={self.root / 'data'}", "-loggerLevel=WARN",
             "-search.latencyOffset=0s", "-search.disableCache",
             # like InfluxDB, a re-sent identical point (same series, same ms) is kept once
             "-dedup.minScrapeInterval=1ms"]
            + (["-tls", f"-tlsCertFile={self._cert}", f"-tlsKeyFile={self._key}"]
               if self._cert else []), self.log_path)
        try:
            procs.wait_until(self.healthy, 30, f"victoria-metrics on port {self.port}",
                             interval=0.1)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{procs.tail(self.log_path)}") from None
        return self

    def stop(self) -> None:
        procs.stop_process(self.proc, timeout=20)

    def healthy(self) -> bool:
        try:
            return _http("GET", f"{self.url}/health", timeout=1, cafile=self.ca_file)[0] == 200
        except OSError:
            return False

    def flush(self) -> None:
        """Make recently ingested samples searchable (VictoriaMetrics buffers them ~1 s)."""
        _http("GET", f"{self.url}/internal/force_flush", cafile=self.ca_file)

    def export(self, match: str = '{__name__=~".+"}') -> list[dict]:
        """Every stored series matching ``match``: ``{"metric": {...}, "values": [...],
        "timestamps": [ms...]}``, one dict per series."""
        self.flush()
        query = urllib.parse.urlencode({"match[]": match, "start": "0"})
        status, body = _http("GET", f"{self.url}/api/v1/export?{query}", cafile=self.ca_file)
        if status != 200:
            raise RuntimeError(f"export failed ({status}): {body[:300]!r}")
        return [json.loads(line) for line in body.decode().splitlines() if line.strip()]

    def count(self, match: str = '{__name__=~".+"}') -> int:
        return sum(len(series["timestamps"]) for series in self.export(match))


@pytest.fixture
def influxdb(tmp_path):
    """A running InfluxDB 1.6.7 without authentication."""
    server = InfluxServer(tmp_path / "influxdb").start()
    yield server
    server.stop()


@pytest.fixture
def influxdb_auth(tmp_path):
    """A running InfluxDB 1.6.7 with ``auth-enabled`` and an admin user ``admin``/``admin``."""
    server = InfluxServer(tmp_path / "influxdb-auth", auth=True).start()
    yield server
    server.stop()


@pytest.fixture
def victoriametrics(tmp_path):
    """A running single-node VictoriaMetrics (accepts the InfluxDB v1 and v2 write APIs)."""
    server = VictoriaMetricsServer(tmp_path / "victoriametrics").start()
    yield server
    server.stop()


# ---- workloads: realistic events for writer tests and the writer benchmark ----------------------

def ha_state_event(entity_id: str, state: str, attributes: dict, time_ns: int,
                   kind: str = "live") -> dict:
    """An HA ``state_changed`` envelope shaped like the real frames in the HA samples."""
    from datetime import datetime, timezone

    from ha_ingestor.envelope import ha_event
    stamp = datetime.fromtimestamp(time_ns // 1000 / 1e6, tz=timezone.utc)
    stamp = stamp.replace(microsecond=(time_ns // 1000) % 1_000_000).isoformat()
    context = {"id": f"01H{time_ns:023d}"[:26], "parent_id": None, "user_id": None}
    new_state = {"entity_id": entity_id, "state": state, "attributes": attributes,
                 "last_changed": stamp, "last_updated": stamp, "context": context}
    event = {"event_type": "state_changed",
             "data": {"entity_id": entity_id, "old_state": None, "new_state": new_state},
             "origin": "LOCAL", "time_fired": stamp, "context": context}
    return ha_event(event, kind, received_ns=time_ns + 1_000_000)


def mixed_events(count: int, start_ns: int, step_ns: int = 1_000_000, sensors: int = 50,
                 ) -> list[dict]:
    """``count`` envelopes, one point each: HA temperature sensors, switches, call_service events
    and zigbee2mqtt / plain MQTT messages, every one at its own time (``step_ns`` apart)."""
    from ha_ingestor.envelope import ha_event, mqtt_event
    events = []
    for i in range(count):
        t = start_ns + i * step_ns
        kind = i % 5
        n = i % sensors
        if kind == 0:
            events.append(ha_state_event(
                f"sensor.room_{n}_temperature", f"{20 + (i % 100) / 10:.1f}",
                {"state_class": "measurement", "unit_of_measurement": "°C",
                 "device_class": "temperature", "friendly_name": f"Room {n} temperature"}, t))
        elif kind == 1:
            events.append(ha_state_event(
                f"switch.plug_{n}", "on" if i % 2 else "off",
                {"friendly_name": f"Plug {n}", "icon": "mdi:power"}, t))
        elif kind == 2:
            stamp = ha_state_event("x.y", "1", {}, t)["event"]["time_fired"]
            events.append(ha_event({
                "event_type": "call_service",
                "data": {"domain": "light", "service": "turn_on",
                         "service_data": {"entity_id": [f"light.lamp_{n}"], "brightness": i % 255}},
                "origin": "LOCAL", "time_fired": stamp,
                "context": {"id": f"ctx{i}", "parent_id": None, "user_id": None}},
                received_ns=t))
        elif kind == 3:
            payload = (f'{{"temperature":{18 + i % 70 / 10},"humidity":{40 + i % 30},'
                       f'"battery":{i % 100},"linkquality":{i % 255},"voltage":2975}}')
            events.append(mqtt_event(f"zigbee2mqtt/sensor_{n}", payload.encode(), 1, False, t))
        else:
            events.append(mqtt_event(f"home/room_{n}/power", str(i % 3000).encode(), 0,
                                     False, t))
    return events
