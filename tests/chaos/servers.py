"""The real servers of a chaos run, each restartable on the same port with the same data:
InfluxDB 1.6 (``influxd``), Mosquitto, and Home Assistant 2024.3.3 in its own virtualenv.

These are started directly rather than through the pytest fixtures because a chaos run kills and
restarts them on purpose and must keep their ports and data across restarts.
"""

from __future__ import annotations

import getpass
import json
import logging
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tests.support import procs

log = logging.getLogger(__name__)


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None,
         timeout: float = 10.0) -> tuple[int, bytes]:
    """One HTTP request; returns (status, body) for any status, raises OSError when unreachable."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Server:
    """A server process this harness owns: start, graceful stop, SIGKILL, restart."""

    name = "server"

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / f"{self.name}.log"
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 60.0) -> None:
        self.proc = procs.start_process(self.argv(), self.log_path)
        try:
            procs.wait_until(lambda: self.proc.poll() is None and self.ready(), timeout,
                             f"{self.name} (log {self.log_path})", interval=0.1)
        except TimeoutError as exc:
            raise RuntimeError(f"{exc}\n{procs.tail(self.log_path)}") from None

    def stop(self, timeout: float = 30.0) -> None:
        procs.stop_process(self.proc, timeout)

    def kill(self) -> None:
        if self.proc is not None:
            procs.kill_process(self.proc)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None


class InfluxServer(Server):
    """InfluxDB 1.6 with its meta, data and WAL under the run's folder; WAL fsync on every write."""

    name = "influxdb"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.binary = procs.require_binary("influxd", "influxdb")
        self.port = procs.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.conf = self.dir / "influxdb.conf"
        self.conf.write_text(self._config(procs.free_port()))

    def _config(self, rpc_port: int) -> str:
        d = self.dir
        return (f'reporting-disabled = true\nbind-address = "127.0.0.1:{rpc_port}"\n'
                f'[meta]\n  dir = "{d}/meta"\n  logging-enabled = false\n'
                f'[data]\n  dir = "{d}/data"\n  wal-dir = "{d}/wal"\n  wal-fsync-delay = "0s"\n'
                f'  query-log-enabled = false\n'
                f'[monitor]\n  store-enabled = false\n'
                f'[http]\n  bind-address = "127.0.0.1:{self.port}"\n  log-enabled = false\n'
                f'  max-row-limit = 0\n  pprof-enabled = false\n')

    def argv(self) -> list[str]:
        return [self.binary, "-config", str(self.conf)]

    def ready(self) -> bool:
        try:
            return http("GET", f"{self.url}/ping", timeout=1)[0] == 204
        except OSError:
            return False

    def query(self, q: str, db: str | None = None, method: str = "GET") -> list[dict]:
        """Run InfluxQL; returns the ``series`` of every statement, chunks joined. Raises on error."""
        params = {"q": q, "epoch": "ns", "chunked": "true", "chunk_size": "20000"}
        if db:
            params["db"] = db
        url = f"{self.url}/query?{urllib.parse.urlencode(params)}"
        status, body = http(method, url, timeout=120)
        if status != 200:
            raise RuntimeError(f"InfluxDB query {q!r} failed: HTTP {status} {body[:300]!r}")
        series = []
        for line in body.splitlines():
            if not line.strip():
                continue
            for result in json.loads(line).get("results", []):
                if "error" in result:
                    raise RuntimeError(f"InfluxDB query {q!r} failed: {result['error']}")
                series.extend(result.get("series", []))
        return series

    def create_database(self, name: str) -> None:
        self.query(f'CREATE DATABASE "{name}"', method="POST")


class MosquittoServer(Server):
    """Mosquitto with persistence on, so queued QoS 1 messages survive a graceful restart."""

    name = "mosquitto"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.binary = procs.require_binary("mosquitto", "mosquitto")
        self.port = procs.free_port()
        self.conf = self.dir / "mosquitto.conf"
        # max_queued_messages: the default (1000) is smaller than what queues up for the
        # collector's persistent session while it is killed at 200 msgs/s with retries.
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            # as root it would switch to the 'mosquitto' user, which cannot write its
            # persistence file in our folder: sessions would silently not survive a restart
            f"user {getpass.getuser()}\n"
            f"persistence true\npersistence_location {self.dir}/\n"
            f"max_queued_messages 10000000\nmax_inflight_messages 100\n"
            f"log_dest stdout\nlog_type error\nlog_type warning\nlog_type notice\n")

    def argv(self) -> list[str]:
        return [self.binary, "-c", str(self.conf)]

    def ready(self) -> bool:
        return procs.port_open(self.port)
