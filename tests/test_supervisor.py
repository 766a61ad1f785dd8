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
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from ha_ingestor.errors import EXIT_AUTH, EXIT_CONFIG, EXIT_FAILURE, EXIT_KILLED, EXIT_OK
from tests.support.procs import free_port, tail, wait_until

# A stand-in component. It records its pid when it starts and "<name> term <time>" / "<name> exit
# <time>" in a shared journal; its behaviour comes from argv: graceful [delay] | ignore-term |
# exit <code>. Like the real components it asks to die with the supervisor and ticks its heartbeat
# (``ha_ingestor.lifecycle``); with mode ``stall`` it stops ticking after its start.
CHILD = textwrap.dedent("""
    import os, signal, sys, time
    from ha_ingestor.lifecycle import HEARTBEAT, die_with_parent
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
    signal.signal(signal.SIGTERM, on_term if mode in ("graceful", "stall") else signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    class Parent:
        def set(self):
            on_term(signal.SIGTERM, None)
    die_with_parent(Parent())
    HEARTBEAT.report_to_supervisor()
    while not stopping:
        if mode != "stall":
            HEARTBEAT.tick()
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

    def __init__(self, tmp_path: Path, children: dict[str, list[str]], shutdown_timeout="5s",
                 stall_timeout="60s"):
        self.dir = tmp_path
        self.journal_path = tmp_path / "journal.txt"
        self.metrics_port = free_port()
        (tmp_path / "child.py").write_text(CHILD)
        (tmp_path / "driver.py").write_text(DRIVER)
        config = {"queue": {"dir": str(tmp_path / "queue")}, "mqtt": {"enabled": False},
                  "homeassistant": {"enabled": False},
                  "metrics": {"ports": {"run": self.metrics_port}},
                  "run": {"shutdown_timeout": shutdown_timeout, "stall_timeout": stall_timeout}}
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
    except OSError:          # not listening (yet)
        return 0, ""


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
    assert "ha_ingestor_points_written_total" not in http_get(f"{base}/metrics")[1]
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
    time.sleep(2)
    assert len(sup.pids("mqtt")) <= 5            # 0.5 s, 1 s, 2 s, 4 s ... not a hot loop
    delays = [float(d) for d in re.findall(r"mqtt exited with code 1 .* restarting in "
                                           r"([0-9.]+) s", sup.log())]
    assert len(delays) >= 3 and delays == sorted(delays) and delays[0] < 1, delays
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


def test_a_child_that_stops_ticking_is_killed_and_restarted(stand_ins):
    sup = stand_ins({"writer": ["graceful"], "mqtt": ["stall"]}, stall_timeout="2s")
    stuck = sup.wait_started("mqtt")
    writer = sup.wait_started("writer")
    replacement = sup.wait_started("mqtt", count=2, timeout=10)
    assert replacement != stuck and not alive(stuck)
    assert "mqtt (pid %d) has not made progress for" % stuck in sup.log()
    assert sup.pids("writer") == [writer]          # a ticking child is left alone
    os.kill(sup.proc.pid, signal.SIGTERM)
    assert sup.wait_exit(15) in (EXIT_OK, EXIT_FAILURE)


def test_a_child_whose_supervisor_died_before_it_started_stops_at_once(tmp_path):
    """The race a ``preexec_fn`` used to close: the parent dies between fork and the child's
    PR_SET_PDEATHSIG. The child sees another parent and stops as if told to."""
    (tmp_path / "child.py").write_text(CHILD)
    journal = tmp_path / "journal.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HA_INGESTOR_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    env["HA_INGESTOR_PARENT_PID"] = str(os.getpid() + 1_000_000)    # not its parent
    child = subprocess.Popen([sys.executable, str(tmp_path / "child.py"), str(journal), "w",
                              "graceful"], env=env)
    assert child.wait(20) == 0
    assert [line.split()[1] for line in journal.read_text().splitlines()] == \
        ["start", "term", "exit"]


# ---- the whole product: `ha-ingestor run` against real servers -----------------------------

DB = "home_assistant"
MQTT_TOPIC = "e2e/seq"
COMPONENT_ARGS = {"mqtt": "collect mqtt", "ha": "collect ha", "writer": "write"}


def child_pids(parent: int) -> dict[str, int]:
    """The running children of ``ha-ingestor run``, by component."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) != parent or fields[0] == "Z":
            continue
        for name, args in COMPONENT_ARGS.items():
            if cmdline.rstrip().endswith(args):
                found[name] = int(entry.name)
    return found


class MqttFlow:
    """Publishes ``e2e/seq`` QoS 1 messages with increasing numbers at ``rate``/s; ``acked`` are
    the ones the broker took responsibility for."""

    def __init__(self, port: int, rate: float = 200):
        import paho.mqtt.client as mqtt
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="e2e-publisher")
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.rate, self.acked, self.stop = rate, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        seq = 0
        while not self.stop.is_set():
            info = self.client.publish(MQTT_TOPIC, str(seq), qos=1)
            info.wait_for_publish(10)
            self.acked.append(seq)
            seq += 1
            self.stop.wait(1 / self.rate)

    def finish(self) -> list[int]:
        self.stop.set()
        self.thread.join(15)
        self.client.loop_stop()
        self.client.disconnect()
        return self.acked


def mqtt_points(influxdb) -> list[float]:
    rows = influxdb.query(f"SELECT \"value\" FROM \"mqtt\" WHERE \"topic\" = '{MQTT_TOPIC}'", DB)
    return [row["value"] for row in rows]


def ha_points(influxdb) -> list[tuple[str, int]]:
    """(entity_id, time ns) of every state_changed point, whichever measurement it is in."""
    points = []
    for field in ("value", "state"):
        for row in influxdb.query(f'SELECT "{field}", "domain", "entity_id" FROM /.*/ '
                                  f'WHERE "domain" =~ /./', DB):
            if row.get(field) is not None:
                points.append((f"{row['domain']}.{row['entity_id']}", row["time"]))
    return points


def fired_states(server) -> set[tuple[str, int]]:
    """(entity_id, time_fired in ns) of every state_changed the HA test server fired."""
    from datetime import datetime, timezone
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)

    def ns(text: str) -> int:
        delta = datetime.fromisoformat(text) - epoch
        return ((delta.days * 86400 + delta.seconds) * 10**6 + delta.microseconds) * 1000
    return {(entity, ns(fired)) for entity, fired in list(server.fired_states)}


@pytest.fixture
def product(mosquitto, influxdb, ha_test_server, ingestor):
    """A config for `ha-ingestor run` with all three components against the real servers."""
    influxdb.create_database(DB)
    return ingestor({
        "mqtt": {"enabled": True, "host": "127.0.0.1", "port": mosquitto.port,
                 "client_id": "e2e-ingestor", "topics": [MQTT_TOPIC]},
        "homeassistant": {"enabled": True, "url": ha_test_server.url,
                          "token": ha_test_server.token},
        "influxdb": {"url": influxdb.url, "database": DB, "flush_interval": "200ms"},
        "run": {"shutdown_timeout": "20s"},
    })


def start_run(ing) -> subprocess.Popen:
    proc = ing.start("run", log="run")
    ports = ing.config["metrics"]["ports"]
    for name in ("mqtt", "ha", "writer"):
        wait_until(lambda: http_get(f"http://127.0.0.1:{ports[name]}/readyz")[0] == 200, 30,
                   f"{name} ready under run")
    return proc


def wait_all_written(influxdb, acked: list[int], server, timeout: float = 60) -> None:
    def done():
        return (set(mqtt_points(influxdb)) >= set(map(float, acked))
                and set(ha_points(influxdb)) >= fired_states(server))
    wait_until(done, timeout, "every message and state change in InfluxDB", interval=0.5)


def test_run_restarts_each_killed_child_and_every_message_arrives(product, mosquitto, influxdb,
                                                                  ha_test_server):
    ing = product
    run = start_run(ing)
    ports = ing.config["metrics"]["ports"]
    flow = MqttFlow(mosquitto.port, rate=200)
    ha_test_server.set_rate(50)
    try:
        for name in ("mqtt", "ha", "writer"):
            time.sleep(2)
            old = child_pids(run.pid)[name]
            os.kill(old, signal.SIGKILL)
            wait_until(lambda: child_pids(run.pid).get(name, old) != old, 10,
                       f"{name} restarted by run")
            wait_until(lambda: http_get(f"http://127.0.0.1:{ports[name]}/readyz")[0] == 200,
                       30, f"{name} ready again")
        time.sleep(2)
    finally:
        ha_test_server.set_rate(0)
        acked = flow.finish()
    assert run.poll() is None, tail(ing.log_path("run"))
    assert len(acked) > 1000 and len(fired_states(ha_test_server)) > 200   # it was under load
    try:
        wait_all_written(influxdb, acked, ha_test_server)
    except TimeoutError:
        missing = set(map(float, acked)) - set(mqtt_points(influxdb))
        missing_ha = fired_states(ha_test_server) - set(ha_points(influxdb))
        raise AssertionError(f"{len(missing)} MQTT and {len(missing_ha)} HA missing\n"
                             f"{tail(ing.log_path('run'), 60)}") from None
    log = ing.log_path("run").read_text()
    for name in ("mqtt", "ha", "writer"):
        assert f"{name} exited with signal SIGKILL" in log
    os.kill(run.pid, signal.SIGTERM)
    assert run.wait(30) == EXIT_OK


def test_sigterm_under_load_exits_0_and_a_restart_loses_and_doubles_nothing(
        product, mosquitto, influxdb, ha_test_server):
    ing = product
    timeout = 20
    run = start_run(ing)
    flow = MqttFlow(mosquitto.port, rate=300)
    ha_test_server.set_rate(100)
    try:
        time.sleep(4)
        began = time.monotonic()
        os.kill(run.pid, signal.SIGTERM)
        code = run.wait(timeout + 10)
        took = time.monotonic() - began
        assert code == EXIT_OK, tail(ing.log_path("run"), 60)
        assert took < timeout, f"stopped in {took:.1f} s"
        assert not child_pids(run.pid)
        time.sleep(2)                     # the sources keep going while nothing runs
        start_run(ing)
        time.sleep(3)
    finally:
        ha_test_server.set_rate(0)
        acked = flow.finish()
    assert len(acked) > 1500 and len(fired_states(ha_test_server)) > 500   # it was under load
    wait_all_written(influxdb, acked, ha_test_server)
    time.sleep(2)                         # anything doubled would arrive by now
    values = mqtt_points(influxdb)
    assert sorted(values) == list(map(float, acked)), "MQTT messages missing or doubled"
    assert set(ha_points(influxdb)) >= fired_states(ha_test_server)   # InfluxDB keeps one
    # point per entity and time_fired, so HA copies (backfill, resync) cannot double anything


def test_a_sigstopped_writer_fails_healthz_and_is_replaced_losing_and_doubling_nothing(
        product, mosquitto, influxdb, ha_test_server):
    """A stopped (or stuck) writer holds its batch and answers nothing; ha-ingestor run notices
    within run.stall_timeout that it stopped ticking, kills it and starts another."""
    ing = product
    ing.write_config({"run": {"stall_timeout": "5s"}})
    run = start_run(ing)
    health = f"http://127.0.0.1:{ing.config['metrics']['ports']['writer']}/healthz"
    flow = MqttFlow(mosquitto.port, rate=200)
    ha_test_server.set_rate(50)
    try:
        time.sleep(2)
        assert http_get(health)[0] == 200
        stopped = child_pids(run.pid)["writer"]
        os.kill(stopped, signal.SIGSTOP)
        began = time.monotonic()
        assert http_get(health)[0] != 200                 # no answer from a stopped process
        wait_until(lambda: child_pids(run.pid).get("writer", stopped) != stopped, 15,
                   "the stopped writer replaced")
        replaced_after = time.monotonic() - began
        wait_until(lambda: http_get(health)[0] == 200, 30, "the new writer healthy")
        time.sleep(2)
    finally:
        ha_test_server.set_rate(0)
        acked = flow.finish()
    assert 4 <= replaced_after <= 8, replaced_after      # run.stall_timeout (5 s) + polling
    assert "writer (pid %d) has not made progress for" % stopped in ing.log_path("run").read_text()
    wait_all_written(influxdb, acked, ha_test_server)
    time.sleep(2)                         # anything doubled would arrive by now
    assert sorted(mqtt_points(influxdb)) == list(map(float, acked)), "missing or doubled"
    assert run.poll() is None
    os.kill(run.pid, signal.SIGTERM)
    assert run.wait(30) == EXIT_OK


def test_run_does_not_hot_restart_a_collector_whose_token_is_refused(influxdb, ha_test_server,
                                                                     ingestor):
    ing = ingestor({"homeassistant": {"enabled": True, "url": ha_test_server.url,
                                      "token": "not-the-token"},
                    "influxdb": {"url": influxdb.url, "database": DB}})
    run = ing.start("run", log="run")
    log_path = ing.log_path("run")
    wait_until(lambda: "ha exited with code 3" in log_path.read_text(), 30, "ha exit code 3")
    time.sleep(5)
    log = log_path.read_text()
    assert log.count("started ha (pid") == 1, log
    assert "Not restarting it for" in log
    assert ha_test_server.stats["auth_invalid"] == 1
    assert run.poll() is None                     # the writer still runs
    os.kill(run.pid, signal.SIGTERM)
    assert run.wait(30) == EXIT_OK
