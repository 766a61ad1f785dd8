"""The ``ingestor`` fixture: a config file in a temporary folder and ``ha-ingestor`` subprocesses
that use it, the way an administrator runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ha_ingestor import queue
from tests.support.procs import free_port, start_process, stop_process, tail, wait_until

CLI = [sys.executable, "-m", "ha_ingestor"]


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in (extra or {}).items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and \
            isinstance(out.get(key), dict) else value
    return out


class IngestorHarness:
    """One configuration and the processes started with it (stopped at teardown, by pid)."""

    def __init__(self, workdir: Path, overrides: dict | None = None):
        self.workdir = workdir
        self.queue_dir = workdir / "queue"
        self.config_path = workdir / "ha-ingestor.yaml"
        self.procs: list[subprocess.Popen] = []
        base = {
            "queue": {"dir": str(self.queue_dir)},
            "mqtt": {"enabled": False},
            "homeassistant": {"enabled": False},
            "metrics": {"ports": {"run": free_port(), "mqtt": free_port(), "ha": free_port(),
                                  "writer": free_port()}},
        }
        self.config = deep_merge(base, overrides or {})

    def write_config(self, overrides: dict | None = None) -> Path:
        if overrides:
            self.config = deep_merge(self.config, overrides)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        return self.config_path

    def env(self, extra: dict | None = None) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HA_INGESTOR_")}
        env.update(extra or {})
        return env

    def argv(self, *args: str) -> list[str]:
        return CLI + ["--config", str(self.config_path), *args]

    def run(self, *args: str, timeout: float = 60, env: dict | None = None
            ) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout,
                              env=self.env(env), cwd=self.workdir)

    def start(self, *args: str, log: str = "ingestor", env: dict | None = None
              ) -> subprocess.Popen:
        proc = start_process(self.argv(*args), self.log_path(log), env=self.env(env),
                             cwd=self.workdir)
        self.procs.append(proc)
        return proc

    def ready(self, component: str) -> bool:
        """Whether the component's /readyz answers 200 (connected, queue writable)."""
        import urllib.request
        port = self.config["metrics"]["ports"][component]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def log_path(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def wait_for_log(self, name: str, text: str, count: int = 1, timeout: float = 60) -> None:
        """Wait until ``text`` is in the ``name`` log ``count`` times (fails with its tail)."""
        path = self.log_path(name)
        try:
            wait_until(lambda: path.exists() and path.read_text().count(text) >= count, timeout,
                       f"{count} x {text!r} in {path.name}", interval=0.2)
        except TimeoutError as exc:
            pytest.fail(f"{exc}\n{tail(path, 30)}")

    def wait_caught_up(self, count: int = 1, timeout: float = 60) -> None:
        """Wait for the HA collector's ``count``-th catch-up (its ``get_states`` resync is
        stored): a state set before it comes twice, live and in the resync."""
        self.wait_for_log("ha", "caught up:", count, timeout)

    def consumer(self, source: str) -> queue.Consumer:
        return queue.Consumer(self.queue_dir, source)

    def read_all(self, source: str) -> list[dict]:
        """Every unacknowledged event of a queue, oldest first, without consuming it."""
        return queue.peek(self.queue_dir, source, limit=10**9)

    def stop_all(self) -> None:
        for proc in self.procs:
            stop_process(proc, timeout=15)


@pytest.fixture
def ingestor(tmp_path):
    """``ingestor(overrides)`` → IngestorHarness; every process it started is stopped after."""
    harnesses: list[IngestorHarness] = []

    def make(overrides: dict | None = None, name: str = "ing") -> IngestorHarness:
        harness = IngestorHarness(tmp_path / name, overrides)
        harness.workdir.mkdir(parents=True, exist_ok=True)
        harness.write_config()
        harnesses.append(harness)
        return harness
    yield make
    for harness in harnesses:
        harness.stop_all()


# ---- the MQTT collector, as the MQTT tests start it ---------------------------------------------

def collector_config(broker_port: int, **mqtt) -> dict:
    """ingestor() overrides for ``collect mqtt`` against a local broker (fixed client id)."""
    return {"mqtt": {"enabled": True, "host": "127.0.0.1", "port": broker_port,
                     "client_id": "test-collector", **mqtt}}


def start_collector(ing: IngestorHarness, log: str = "mqtt") -> subprocess.Popen:
    """Start ``collect mqtt`` and wait until its subscriptions are in place (made now, or held
    by the broker's session: either way the log says ``subscribed to``)."""
    path = ing.log_path(log)
    before = path.read_text().count("subscribed to") if path.exists() else 0
    proc = ing.start("collect", "mqtt", log=log)
    wait_until(lambda: proc.poll() is not None or
               path.exists() and path.read_text().count("subscribed to") > before,
               30, "collector subscribed")
    assert proc.poll() is None, f"collector exited with {proc.returncode}:\n{tail(path)}"
    return proc
