"""The pipeline under test: ``ha-ingestor run`` (one supervisor, one child per component), its
config, its children found through /proc, and its queue depth.

A child is recognised by its command line (``collect mqtt``, ``collect ha``, ``write``) and, failing
that, by the metrics port it listens on; nothing in the product exists only for the harness.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ha_ingestor import queue as hq
from tests.chaos import procfs
from tests.chaos.servers import http
from tests.support import procs

ROLES = {"mqtt": ("collect", "mqtt"), "ha": ("collect", "ha"), "writer": ("write",)}
CLI = [sys.executable, "-m", "ha_ingestor"]


def ingestor_config(workdir: Path, mqtt_port: int, ha_ws_url: str, influx_url: str,
                    database: str, topics: list[str], extra: dict | None = None) -> dict:
    config = {
        "queue": {"dir": str(workdir / "queue")},
        "mqtt": {"enabled": True, "host": "127.0.0.1", "port": mqtt_port,
                 "client_id": "chaos-ingestor", "topics": topics, "qos": 1},
        "homeassistant": {"enabled": True, "url": ha_ws_url, "token": "${CHAOS_HA_TOKEN}"},
        "influxdb": {"api": "v1", "url": influx_url, "database": database},
        "metrics": {"host": "127.0.0.1",
                    "ports": {name: procs.free_port() for name in ("run", *ROLES)}},
        # writer_pause stops the writer for up to 5 minutes to measure the backlog it leaves;
        # `run` would replace a writer stopped that long (tested in test_supervisor.py)
        "run": {"stall_timeout": "10m"},
    }
    for section, values in (extra or {}).items():
        config.setdefault(section, {}).update(values)
    return config


class Pipeline:
    """``ha-ingestor run`` under a config this harness wrote. ``env`` reaches every child (the
    broken-build test uses it to load a patch into them)."""

    def __init__(self, workdir: Path, config: dict, env: dict | None = None) -> None:
        self.dir = workdir / "ingestor"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.queue_dir = Path(config["queue"]["dir"])
        self.config_path = self.dir / "ha-ingestor.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
        self.log_path = self.dir / "run.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("HA_INGESTOR_")}
        self.env.update(env or {})
        self.proc: subprocess.Popen | None = None

    def argv(self, *args: str) -> list[str]:
        return [*CLI, "--config", str(self.config_path), *args]

    def start(self, timeout: float = 60.0) -> None:
        self.proc = procs.start_process(self.argv("run"), self.log_path, env=self.env)
        procs.wait_until(lambda: len(self.children()) == len(self.roles())
                         or self.proc.poll() is not None,
                         timeout, "ha-ingestor run children")
        if self.proc.poll() is not None:
            raise RuntimeError(f"ha-ingestor run exited with {self.proc.returncode}:\n"
                               f"{procs.tail(self.log_path)}")
        procs.wait_until(self.ready, timeout, "every ha-ingestor component's /readyz",
                         interval=0.2)

    def ready(self) -> bool:
        """/readyz of every child answers 200 (connected to its source or sink)."""
        ports = self.config["metrics"]["ports"]
        for role in self.roles():
            try:
                if http("GET", f"http://127.0.0.1:{ports[role]}/readyz", timeout=2)[0] != 200:
                    return False
            except OSError:
                return False
        return True

    def roles(self) -> list[str]:
        enabled = {"mqtt": self.config["mqtt"].get("enabled", True),
                   "ha": self.config["homeassistant"].get("enabled", True), "writer": True}
        return [role for role in ROLES if enabled[role]]

    def stop(self, timeout: float = 60.0) -> int | None:
        return procs.stop_process(self.proc, timeout)

    def children(self) -> dict[str, int]:
        """{role: pid} of the supervisor's live children."""
        if self.proc is None or self.proc.poll() is not None:
            return {}
        found = {}
        kids = procfs.children(self.proc.pid)
        for pid in kids:
            args = procfs.cmdline(pid)
            for role, words in ROLES.items():
                if _ends_with(args, words):
                    found[role] = pid
        for role in ROLES:
            if role not in found:
                pid = procfs.listener_pid(self.config["metrics"]["ports"][role], kids)
                if pid is not None:
                    found[role] = pid
        return found

    def child(self, role: str, timeout: float = 60.0) -> int:
        """The pid of ``role``, waiting for the supervisor to (re)start it."""
        pid = None

        def present():
            nonlocal pid
            pid = self.children().get(role)
            return pid is not None
        procs.wait_until(present, timeout, f"ha-ingestor child {role!r}", interval=0.1)
        return pid

    def signal_child(self, role: str, sig: int) -> int:
        pid = self.child(role)
        os.kill(pid, sig)
        return pid

    def wait_restarted(self, role: str, old_pid: int, timeout: float = 60.0) -> float:
        """Seconds until a new ``role`` child replaces ``old_pid``."""
        started = time.monotonic()
        procs.wait_until(lambda: self.children().get(role) not in (None, old_pid), timeout,
                         f"restart of {role!r} after pid {old_pid} died", interval=0.05)
        return time.monotonic() - started

    def depth(self) -> dict[str, hq.QueueStatus | None]:
        """Queue status of both sources (events ready + in flight, bytes on disk)."""
        return {source: hq.read_status(self.queue_dir, source) for source in ("mqtt", "ha")}

    def backlog(self) -> int:
        return sum(s.ready + s.in_flight for s in self.depth().values() if s is not None)

    def queue_status_cli(self) -> dict:
        """``ha-ingestor queue status --json``, exactly as a monitoring script reads it."""
        out = subprocess.run(self.argv("queue", "status", "--json"), env=self.env,
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"queue status failed ({out.returncode}): {out.stderr}")
        return yaml.safe_load(out.stdout)


def _ends_with(args: list[str], words: tuple[str, ...]) -> bool:
    return len(args) >= len(words) and tuple(args[-len(words):]) == words
