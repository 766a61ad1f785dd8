"""``ha-ingestor run``: the supervisor keeps every component alive and stops them in order.

Two kinds of scenario:

- The supervisor's own rules (restart with backoff, no hot loop on exit codes 2 and 3, collectors
  stop before the writer, the shutdown deadline, a second signal) with small stand-in children
  whose behaviour each test picks, so every rule is checked in seconds.
- The whole product: ``ha-ingestor run`` against real Mosquitto, InfluxDB 1.6.7 and the HA test
  server, with every child SIGKILLed in turn while messages flow, and SIGTERM under load.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from ha_ingestor.errors import EXIT_AUTH, EXIT_CONFIG, EXIT_FAILURE, EXIT_KILLED, EXIT_OK
from tests.support.procs import free_port, tail, wait_until

# A stand-in component. It records its pid when it starts and "<name> term <time>" / "<name> exit
# <time>" in a shared journal; its behaviour comes from argv: graceful [delay] | ignore-term |
# exit <code>.
CHILD = textwrap.dedent("""
    import os, signal, sys, time
    journal, name, mode, *rest = sys.argv[1:]
    def note(what):
        with open(journal, "a") as f:
            f.write(f"{name} {what} {time.monotonic():.3f} {os.getpid()}\\n")
    note("start")
    if mode == "exit":
        sys.exit(int(rest[0]))
    stopping = []
    def on_term(signum, frame):
        stopping.append(signum)
        note("term")
    signal.signal(signal.SIGTERM, on_term if mode == "graceful" else signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while not stopping:
        time.sleep(0.02)
    time.sleep(float(rest[0]) if rest else 0)
    note("exit")
""")

DRIVER = textwrap.dedent("""
    import json, logging, sys
    from ha_ingestor import supervisor
    from ha_ingestor.config import load_config
    from ha_ingestor.lifecycle import StopFlag
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = load_config(sys.argv[1])
    sys.exit(supervisor.run(config, StopFlag().install(), json.loads(sys.argv[2])))
""")


class StandIns:
    """A supervisor driving stand-in children; ``journal()`` reads what the children did."""

    def __init__(self, tmp_path: Path, children: dict[str, list[str]], shutdown_timeout="5s"):
        self.dir = tmp_path
        self.journal_path = tmp_path / "journal.txt"
        self.metrics_port = free_port()
        (tmp_path / "child.py").write_text(CHILD)
        (tmp_path / "driver.py").write_text(DRIVER)
        config = {"queue": {"dir": str(tmp_path / "queue")}, "mqtt": {"enabled": False},
                  "homeassistant": {"enabled": False},
                  "metrics": {"ports": {"run": self.metrics_port}},
                  "run": {"shutdown_timeout": shutdown_timeout}}
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
        argv = {name: [sys.executable, str(tmp_path / "child.py"), str(self.journal_path), name,
                       *args] for name, args in children.items()}
        self.log_path = tmp_path / "supervisor.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("HA_INGESTOR_")}
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
        self.proc = subprocess.Popen(
            [sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "config.yaml"),
             json.dumps(argv)], stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT,
            env=env, start_new_session=True)

    def journal(self) -> list[tuple[str, str, float, int]]:
        if not self.journal_path.exists():
            return []
        rows = [line.split() for line in self.journal_path.read_text().splitlines()]
        return [(name, what, float(at), int(pid)) for name, what, at, pid in rows]

    def pids(self, name: str, what: str = "start") -> list[int]:
        return [pid for n, w, _, pid in self.journal() if n == name and w == what]

    def at(self, name: str, what: str) -> float:
        return next(t for n, w, t, _ in self.journal() if n == name and w == what)

    def wait_started(self, name: str, count: int = 1, timeout: float = 10) -> int:
        wait_until(lambda: len(self.pids(name)) >= count, timeout, f"{name} start #{count}")
        return self.pids(name)[-1]

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"supervisor still running after {timeout} s:\n"
                                 f"{tail(self.log_path)}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        for name, what, _, pid in self.journal():
            if what == "start" and alive(pid):
                os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:   # a zombie that nobody reaped yet counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.fixture
def stand_ins(tmp_path):
    made: list[StandIns] = []

    def make(children: dict[str, list[str]], **kwargs) -> StandIns:
        made.append(StandIns(tmp_path, children, **kwargs))
        return made[-1]
    yield make
    for sup in made:
        sup.cleanup()


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


# ---- the supervisor's rules, with stand-in children -----------------------------------------

def test_a_killed_child_is_restarted_and_collectors_stop_before_the_writer(stand_ins):
    sup = stand_ins({"writer": ["graceful", "0.3"], "mqtt": ["graceful", "0.5"],
                     "ha": ["graceful", "0.5"]})
    first = {name: sup.wait_started(name) for name in ("writer", "mqtt", "ha")}

    for name in ("mqtt", "ha", "writer"):          # SIGKILL each child in turn
        os.kill(first[name], signal.SIGKILL)
        new_pid = sup.wait_started(name, count=2, timeout=5)
        assert new_pid != first[name]
    assert "exited with signal SIGKILL" in sup.log()

    os.kill(sup.proc.pid, signal.SIGTERM)
    assert sup.wait_exit(15) == EXIT_OK
    writer_term = sup.at("writer", "term")
    for collector in ("mqtt", "ha"):               # writer told to stop only after both exited
        assert sup.at(collector, "exit") <= writer_term
    assert not any(alive(pid) for n, w, _, pid in sup.journal() if w == "start")


def test_supervisor_endpoint_reports_children(stand_ins):
    sup = stand_ins({"writer": ["graceful"], "mqtt": ["graceful"]})
    sup.wait_started("writer"), sup.wait_started("mqtt")
    base = f"http://127.0.0.1:{sup.metrics_port}"
    wait_until(lambda: http_get(f"{base}/readyz")[0] == 200, 10, "supervisor /readyz")
    assert http_get(f"{base}/healthz")[0] == 200
    os.kill(sup.pids("mqtt")[-1], signal.SIGKILL)
    wait_until(lambda: 'ha_ingestor_child_restarts_total{component="mqtt"} 1.0'
               in http_get(f"{base}/metrics")[1], 10, "restart counted in /metrics")
    os.kill(sup.proc.pid, signal.SIGTERM)
    assert sup.wait_exit(15) == EXIT_OK


@pytest.mark.parametrize("code", [EXIT_CONFIG, EXIT_AUTH])
def test_config_and_auth_exits_are_not_restarted_in_a_hot_loop(stand_ins, code):
    sup = stand_ins({"writer": ["graceful"], "ha": ["exit", str(code)]})
    sup.wait_started("writer")
    sup.wait_started("ha")
    time.sleep(4)
    assert len(sup.pids("ha")) == 1, "restarted within seconds despite exit code %d" % code
    assert f"ha exited with code {code}" in sup.log()
    assert "Not restarting it for" in sup.log()
    assert sup.proc.poll() is None               # the writer still runs, so the supervisor does
    os.kill(sup.proc.pid, signal.SIGTERM)
    assert sup.wait_exit(15) == EXIT_OK


def test_every_child_with_bad_config_makes_run_exit_with_that_code(stand_ins):
    sup = stand_ins({"writer": ["exit", "2"], "mqtt": ["exit", "2"], "ha": ["exit", "3"]})
    assert sup.wait_exit(10) == EXIT_CONFIG
    assert "every component exited with code 2" in sup.log()


def test_a_crashing_child_is_restarted_with_growing_delays(stand_ins):
    sup = stand_ins({"writer": ["graceful"], "mqtt": ["exit", "1"]})
    sup.wait_started("mqtt", count=3, timeout=10)
    starts = [t for n, w, t, _ in sup.journal() if n == "mqtt" and w == "start"]
    time.sleep(2)
    assert len(sup.pids("mqtt")) <= 5            # 0.5 s, 1 s, 2 s, 4 s ... not a hot loop
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert gaps[1] > gaps[0] * 1.2, gaps
    os.kill(sup.proc.pid, signal.SIGTERM)
    assert sup.wait_exit(15) == EXIT_OK


def test_a_child_that_ignores_sigterm_is_killed_at_the_shutdown_timeout(stand_ins):
    sup = stand_ins({"writer": ["ignore-term"], "mqtt": ["graceful"]}, shutdown_timeout="2s")
    writer = sup.wait_started("writer")
    sup.wait_started("mqtt")
    started = time.monotonic()
    os.kill(sup.proc.pid, signal.SIGTERM)
    assert sup.wait_exit(10) == EXIT_FAILURE
    assert 1.5 < time.monotonic() - started < 5
    assert not alive(writer)
    assert "writer did not stop within the shutdown timeout" in sup.log()


def test_a_second_signal_kills_every_child_at_once(stand_ins):
    sup = stand_ins({"writer": ["ignore-term"], "mqtt": ["ignore-term"]},
                    shutdown_timeout="30s")
    pids = [sup.wait_started("writer"), sup.wait_started("mqtt")]
    os.kill(sup.proc.pid, signal.SIGTERM)
    time.sleep(0.5)
    started = time.monotonic()
    os.kill(sup.proc.pid, signal.SIGINT)
    assert sup.wait_exit(5) == EXIT_KILLED
    assert time.monotonic() - started < 2
    wait_until(lambda: not any(alive(pid) for pid in pids), 5, "children gone")


def test_children_stop_when_the_supervisor_is_killed(stand_ins):
    sup = stand_ins({"writer": ["graceful"], "mqtt": ["graceful"]})
    pids = [sup.wait_started("writer"), sup.wait_started("mqtt")]
    os.kill(sup.proc.pid, signal.SIGKILL)
    sup.proc.wait(5)
    wait_until(lambda: not any(alive(pid) for pid in pids), 10, "orphaned children gone")
    assert sup.pids("writer", "term")        # they got SIGTERM: a graceful stop
