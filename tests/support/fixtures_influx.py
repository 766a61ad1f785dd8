"""Pytest plugin: real InfluxDB 1.6.7 (Debian's ``influxd``) and VictoriaMetrics servers.

Each server runs on free loopback ports with every byte of its data in the test's tmp folder, and
is stopped by pid. ``influxdb`` answers ``.query(q, db)`` with the parsed rows, ``victoriametrics``
``.export(match)`` with the stored samples.
"""

from __future__ import annotations

import base64
import json
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
  log-enabled = false
  pprof-enabled = false
  max-body-size = {max_body_size}

[logging]
  level = "warn"
"""


def _http(method: str, url: str, data: bytes | None = None, headers: dict | None = None,
          timeout: float = 30.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class InfluxServer:
    """One ``influxd`` process. ``stop()``/``start()`` keep the data; ``kill()`` is SIGKILL."""

    def __init__(self, root: Path, auth: bool = False, admin: tuple[str, str] = ("admin", "admin"),
                 max_body_size: int = 25_000_000):
        self.binary = procs.require_binary("influxd", "influxdb")
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = procs.free_port()
        self.rpc_port = procs.free_port()
        self.auth = auth
        self.admin = admin
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = root / "influxdb.conf"
        self.config_path.write_text(INFLUXD_CONFIG.format(
            root=root, http_port=self.port, rpc_port=self.rpc_port,
            auth="true" if auth else "false", max_body_size=max_body_size))
        self.log_path = root / "influxd.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "InfluxServer":
        self.proc = procs.start_process([self.binary, "-config", str(self.config_path)],
                                        self.log_path)
        try:
            procs.wait_until(self.ping, 30, f"influxd on port {self.port}", interval=0.1)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{procs.tail(self.log_path)}") from None
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
            return _http("GET", f"{self.url}/ping", timeout=1)[0] == 204
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
                                      **self._auth_headers(auth)})
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

    def count(self, db: str, measurement: str = "/.*/", field: str = "*") -> int:
        """Total number of field values ``count(field)`` over the measurements (all fields)."""
        total = 0
        for row in self.query(f"SELECT count({field}) FROM {measurement}", db):
            total += sum(v for k, v in row.items() if k.startswith("count") and v)
        return total

    def create_database(self, name: str) -> None:
        self._raw_query(f'CREATE DATABASE "{name}"')

    def write(self, db: str, lines: str | bytes) -> None:
        """Post line protocol directly (test setup, e.g. an existing field type)."""
        data = lines.encode() if isinstance(lines, str) else lines
        status, body = _http("POST", f"{self.url}/write?db={urllib.parse.quote(db)}&precision=ns",
                             data=data, headers=self._auth_headers())
        if status != 204:
            raise RuntimeError(f"write failed ({status}): {body[:300]!r}")


class VictoriaMetricsServer:
    """One ``victoria-metrics`` single-node process with its storage in tmp."""

    def __init__(self, root: Path):
        self.binary = procs.require_binary("victoria-metrics", "victoria-metrics")
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = procs.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "victoria-metrics.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "VictoriaMetricsServer":
        self.proc = procs.start_process(
            [self.binary, f"-httpListenAddr=127.0.0.1:{self.port}",
             f"-storageDataPath={self.root / 'data'}", "-loggerLevel=WARN",
             "-search.latencyOffset=0s", "-search.disableCache",
             # like InfluxDB, a re-sent identical point (same series, same ms) is kept once
             "-dedup.minScrapeInterval=1ms"], self.log_path)
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
            return _http("GET", f"{self.url}/health", timeout=1)[0] == 200
        except OSError:
            return False

    def flush(self) -> None:
        """Make recently ingested samples searchable (VictoriaMetrics buffers them ~1 s)."""
        _http("GET", f"{self.url}/internal/force_flush")

    def export(self, match: str = '{__name__=~".+"}') -> list[dict]:
        """Every stored series matching ``match``: ``{"metric": {...}, "values": [...],
        "timestamps": [ms...]}``, one dict per series."""
        self.flush()
        query = urllib.parse.urlencode({"match[]": match, "start": "0"})
        status, body = _http("GET", f"{self.url}/api/v1/export?{query}")
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
