"""End-to-end benchmark: the whole pipeline (``ha-ingestor run``) against a real Home Assistant
2024.3.3, Mosquitto and InfluxDB 1.6 on loopback, each figure next to a ceiling measured in the
same run.

    .venv/bin/python bench/e2e_bench.py [--seconds 30] [--backlog 1000000] [--json out.json]

Phases, in order:
  ceilings        InfluxDB ingest (line protocol, 5 000-point batches, one client), a bare paho
                  QoS 1 subscriber draining a queued session (its own process: CPU and RSS too)
  steady 100/s    50 HA state changes/s + 50 MQTT msgs/s
  steady 1000/s   200 HA state changes/s + 800 MQTT msgs/s
                  latency = fired (HA ``time_fired`` / MQTT publish) -> first seen by a query
                  polling InfluxDB every 100 ms (probe events: 10/s through HA, 20/s through MQTT);
                  CPU s per 1 000 events and RSS of every pipeline process from /proc
  ramp            MQTT at 1 000 ... 32 000 msgs/s (mosquitto_pub): the highest rate whose p99
                  stays <= 1.5 s and whose queue does not grow
  backlog         writer SIGSTOPped, 1 000 000 MQTT messages published and committed; queue bytes
                  per event; writer released; drain rate and peak RSS while draining
  HA ceiling      unpaced call_service for 10 s: state_changed/s HA itself emits (last: it leaves
                  HA backlogged)
Prints a Markdown table and one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from tests.chaos import procfs  # noqa: E402
from tests.chaos.homeassistant import HomeAssistantServer  # noqa: E402
from tests.chaos.ledger import HALedger, iso_to_us  # noqa: E402
from tests.chaos.load import HALoad, MqttLoad, Paced, mqtt_topics  # noqa: E402
from tests.chaos.pipeline import Pipeline, ingestor_config  # noqa: E402
from tests.chaos.servers import InfluxServer, MosquittoServer, http  # noqa: E402

DB = "bench"
P99_BOUND_S = 1.5
PROBE_TOPIC = "bench/probe"
PROBE_ENTITY = "input_number.bench_probe"
ROLES = ("mqtt", "ha", "writer")


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 3)


# -- latency probes ------------------------------------------------------------------------------

class Probes:
    """Probe events through both sources, and a poller that notes when each becomes queryable."""

    def __init__(self, influx: InfluxServer, ha: HomeAssistantServer, mqtt_port: int) -> None:
        self.influx = influx
        self.ha_fired: dict[int, float] = {}     # value*100 -> time_fired (epoch s)
        self.seen: dict[tuple[str, int], float] = {}
        self.ledger = HALedger(ha.connect, prefix="bench_", on_event=self._on_ha_event)
        self.ledger.start()
        self.ha_load = HALoad(ha.connect, [PROBE_ENTITY], 10, random.Random(1))
        self.mqtt_load = MqttLoad(mqtt_port, [PROBE_TOPIC], 20, random.Random(2),
                                  client_id="bench-probe", first_seq=10**9)
        self.stopped = threading.Event()
        threading.Thread(target=self._poll, daemon=True).start()

    def _on_ha_event(self, _entity: str, event: dict) -> None:
        state = (event["data"].get("new_state") or {}).get("state")
        try:
            key = round(float(state) * 100)
        except (TypeError, ValueError):
            return
        self.ha_fired[key] = iso_to_us(event["time_fired"]) / 1e6

    def _poll(self) -> None:
        queries = (("mqtt", f'SELECT "seq" FROM /.*/ WHERE "topic" = \'{PROBE_TOPIC}\' '
                            f'AND time > now() - 60s'),
                   ("ha", 'SELECT "value" FROM /.*/ WHERE "entity_id" = \'bench_probe\' '
                          'AND time > now() - 60s'))
        while not self.stopped.wait(0.1):
            for source, q in queries:
                try:
                    series = self.influx.query(q, db=DB)
                except Exception:
                    continue
                now = time.time()
                for s in series:
                    for row in s["values"]:
                        if row[1] is not None:
                            key = int(row[1]) if source == "mqtt" else round(row[1] * 100)
                            self.seen.setdefault((source, key), now)

    def window(self) -> tuple[int, int]:
        return len(self.ha_fired), self.mqtt_load.seq

    def start(self) -> None:
        self.ha_load.start()
        self.mqtt_load.start()

    def latencies(self, since: float, until: float) -> dict:
        out = {}
        fired = {"ha": self.ha_fired,
                 "mqtt": dict(self.mqtt_load.published_at)}
        for source, times in fired.items():
            lat, missing = [], 0
            for key, t in times.items():
                if since <= t <= until:
                    seen = self.seen.get((source, key))
                    if seen is None:
                        missing += 1
                    else:
                        lat.append(seen - t)
            out[source] = {"p50_s": pct(lat, 0.50), "p99_s": pct(lat, 0.99),
                           "max_s": round(max(lat), 3) if lat else None, "probes": len(lat),
                           "not_seen": missing}
        return out

    def stop(self) -> None:
        self.ha_load.stop()
        self.mqtt_load.stop()
        self.stopped.set()
        self.ledger.stop()


# -- process accounting --------------------------------------------------------------------------

class Processes:
    """CPU seconds and RSS of the pipeline's processes (and the servers', for context)."""

    def __init__(self, pipeline: Pipeline, servers: dict[str, int]) -> None:
        self.pipeline = pipeline
        self.servers = servers
        self.rss_max: dict[str, float] = {}
        self.stopped = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def pids(self) -> dict[str, int]:
        return {**self.pipeline.children(), "run": self.pipeline.proc.pid, **self.servers}

    def cpu(self) -> dict[str, float]:
        out = {}
        for role, pid in self.pids().items():
            try:
                out[role] = procfs.cpu_seconds(pid)
            except (FileNotFoundError, ProcessLookupError):
                pass
        return out

    def _sample(self) -> None:
        while not self.stopped.wait(0.5):
            for role, pid in self.pids().items():
                try:
                    mb = procfs.memory(pid).rss_bytes / 2**20
                except (FileNotFoundError, ProcessLookupError):
                    continue
                self.rss_max[role] = round(max(self.rss_max.get(role, 0), mb), 1)

    def reset_rss(self) -> dict[str, float]:
        peak, self.rss_max = self.rss_max, {}
        return peak


# -- ceilings ------------------------------------------------------------------------------------

def influx_ceiling(influx: InfluxServer, points: int = 200_000, batch: int = 5000) -> float:
    """Points/s one client writes as line protocol in ``batch``-point requests."""
    influx.create_database("ceiling")
    base = time.time_ns() - points * 1000
    lines = [f"zigbee2mqtt,device=sensor_{i % 50},topic=zigbee2mqtt/sensor_{i % 50},retained=false "
             f"seq={i},temperature=21.5,humidity=45.1,battery=87,linkquality=120 {base + i * 1000}"
             for i in range(points)]
    url = f"{influx.url}/write?db=ceiling&precision=ns"
    started = time.perf_counter()
    for i in range(0, points, batch):
        status, body = http("POST", url, "\n".join(lines[i:i + batch]).encode(), timeout=60)
        if status != 204:
            raise RuntimeError(f"ceiling write failed: HTTP {status} {body[:200]!r}")
    return points / (time.perf_counter() - started)


SUBSCRIBER = r"""
import sys, time, paho.mqtt.client as mqtt
port, want, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
got, t = [0], [None]
def on_message(c, u, m):
    if t[0] is None: t[0] = time.perf_counter()
    got[0] += 1
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-bare", clean_session=False)
c.max_inflight_messages_set(1000)
c.on_message = on_message
c.on_connect = lambda c, u, f, r, p: c.subscribe("bare/#", 1)
c.connect("127.0.0.1", port)
if mode == "subscribe":
    deadline = time.time() + 5
    while time.time() < deadline and not c.is_connected(): c.loop(0.1)
    for _ in range(10): c.loop(0.1)
    c.disconnect(); sys.exit(0)
last = time.time()
while got[0] < want and time.time() - last < 15:
    n = got[0]
    c.loop(0.5)
    if got[0] != n: last = time.time()
print(got[0] / (time.perf_counter() - t[0]), got[0], flush=True)
"""


def paho_ceiling(mosquitto: MosquittoServer, n: int = 200_000) -> dict:
    """A bare paho QoS 1 subscriber (its own process) draining ``n`` messages queued in its
    persistent session: the receive ceiling, its CPU per 1 000 messages and its RSS."""
    argv = [sys.executable, "-c", SUBSCRIBER, str(mosquitto.port), str(n)]
    subprocess.run(argv + ["subscribe"], check=True, timeout=30)
    flood(mosquitto.port, n, [f"bare/sensor_{i}" for i in range(4)])
    proc = subprocess.Popen(argv + ["drain"], stdout=subprocess.PIPE, text=True)
    peak = 0.0
    while proc.poll() is None:
        try:
            peak = max(peak, procfs.memory(proc.pid).rss_bytes / 2**20)
            cpu = procfs.cpu_seconds(proc.pid)
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.2)
    rate, got = proc.communicate(timeout=300)[0].split()
    return {"msgs_per_s": round(float(rate)), "received": int(got),
            "cpu_s_per_1000": round(cpu / int(got) * 1000, 4), "rss_mb": round(peak, 1)}


def _payload(i: int) -> str:
    return json.dumps({"temperature": round(15 + (i % 1500) / 100, 2), "humidity": 45.5,
                       "battery": 90, "linkquality": 100, "seq": i})


class PipePublisher(Paced):
    """QoS 1 publishes through ``mosquitto_pub -l`` (one per topic, fed lines on stdin): the C
    client keeps up with rates a Python publisher cannot reach on this machine."""

    def __init__(self, port: int, topics: list[str], rate: float) -> None:
        super().__init__(rate)
        binary = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"
        self.procs = [subprocess.Popen([binary, "-h", "127.0.0.1", "-p", str(port), "-q", "1",
                                        "-t", t, "-l", "-i", f"bench-pub-{i}-{os.getpid()}"],
                                       stdin=subprocess.PIPE, text=True)
                      for i, t in enumerate(topics)]
        self.sent = 0

    def step(self) -> None:
        self.procs[self.sent % len(self.procs)].stdin.write(_payload(self.sent) + "\n")
        self.sent += 1
        if self.sent % 50 == 0:
            for proc in self.procs:
                proc.stdin.flush()

    def stop(self) -> None:
        super().stop()
        for proc in self.procs:
            proc.stdin.close()          # mosquitto_pub sends what it read, then exits
        for proc in self.procs:
            proc.wait(300)


def flood(port: int, n: int, topics: list[str]) -> float:
    """Publish ``n`` QoS 1 messages as fast as ``mosquitto_pub`` (one per topic) can; msgs/s."""
    per = [n // len(topics) + (1 if i < n % len(topics) else 0) for i in range(len(topics))]
    binary = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, count in enumerate(per):
            path = Path(tmp) / f"{i}.txt"
            path.write_text("".join(_payload(j) + "\n" for j in range(count)))
            files.append(path)
        started = time.perf_counter()
        procs = [subprocess.Popen([binary, "-h", "127.0.0.1", "-p", str(port), "-q", "1",
                                   "-t", topic, "-l", "-i", f"bench-flood-{i}-{os.getpid()}"],
                                  stdin=open(path)) for i, (topic, path) in
                 enumerate(zip(topics, files))]
        for proc in procs:
            proc.wait(1800)
        return n / (time.perf_counter() - started)


def ha_ceiling(ha: HomeAssistantServer, seconds: float = 10.0, window: int = 100) -> float:
    """state_changed/s HA emits with ``call_service`` sent unpaced (``window`` outstanding)."""
    ledger = HALedger(ha.connect)
    ledger.start()
    conn = ha.connect()
    sem = threading.Semaphore(window)

    def read():
        try:
            while True:
                if conn.recv().get("type") == "result":
                    sem.release()
        except Exception:
            pass
    threading.Thread(target=read, daemon=True).start()
    entities = [e for e in ha.entities if e.startswith("input_boolean.")]
    before = ledger.events
    started = time.monotonic()
    i = 0
    while time.monotonic() - started < seconds:
        if sem.acquire(timeout=1):
            conn.send({"type": "call_service", "domain": "input_boolean", "service": "toggle",
                       "service_data": {"entity_id": entities[i % len(entities)]}})
            i += 1
    rate = (ledger.events - before) / (time.monotonic() - started)
    conn.close()
    ledger.stop()
    return rate


# -- the pipeline phases -------------------------------------------------------------------------

class Bench:
    def __init__(self, workdir: Path, seconds: float, log) -> None:
        self.workdir, self.seconds, self.log = workdir, seconds, log
        self.results: dict = {}

    def setup(self) -> None:
        self.influx = InfluxServer(self.workdir)
        self.influx.start()
        self.influx.create_database(DB)
        self.mosquitto = MosquittoServer(self.workdir)
        self.mosquitto.start()
        self.ha = HomeAssistantServer(self.workdir)       # no HA influxdb integration here
        self.ha.start()
        self.topics = mqtt_topics(random.Random(1))
        config = ingestor_config(self.workdir, self.mosquitto.port, self.ha.ws_url,
                                 self.influx.url, DB, ["zigbee2mqtt/#", "tele/#", "bench/#"],
                                 {"schema": {"mqtt": {"presets": ["zigbee2mqtt", "tasmota"]}}})
        self.pipeline = Pipeline(self.workdir, config, env={"CHAOS_HA_TOKEN": self.ha.token})
        self.pipeline.start()
        self.ledger = HALedger(self.ha.connect)
        self.ledger.start()
        self.procs = Processes(self.pipeline, {"influxd": self.influx.pid,
                                               "mosquitto": self.mosquitto.pid,
                                               "homeassistant": self.ha.pid})
        self.probes = Probes(self.influx, self.ha, self.mosquitto.port)
        self.probes.start()

    def teardown(self) -> None:
        for part in ("probes", "ledger"):
            if hasattr(self, part):
                getattr(self, part).stop()
        if hasattr(self, "procs"):
            self.procs.stopped.set()
        for name in ("pipeline", "ha", "mosquitto", "influx"):
            if hasattr(self, name):
                try:
                    getattr(self, name).stop()
                except Exception as exc:
                    self.log(f"stopping {name}: {exc}")

    def steady(self, name: str, ha_rate: float, mqtt_rate: float, seconds: float,
               pipe: bool = False) -> dict:
        """Load at a fixed mix for ``seconds``: latency, CPU per 1 000 events, RSS. ``pipe``:
        publish through mosquitto_pub (rates above what one Python publisher reaches)."""
        self.log(f"{name}: {ha_rate} HA/s + {mqtt_rate} MQTT/s for {seconds:.0f} s")
        ha_load = HALoad(self.ha.connect, self.ha.entities, ha_rate, random.Random(3)) \
            if ha_rate else None
        if pipe:
            mqtt_load = PipePublisher(self.mosquitto.port, self.topics[:4], mqtt_rate)
        else:
            mqtt_load = MqttLoad(self.mosquitto.port, self.topics, mqtt_rate, random.Random(4),
                                 client_id=f"bench-{name}")
        time.sleep(1)
        self.procs.reset_rss()
        cpu0, ha0, t0 = self.procs.cpu(), self.ledger.events, time.time()
        for load in (ha_load, mqtt_load):
            if load:
                load.start()
        time.sleep(seconds)
        for load in (ha_load, mqtt_load):
            if load:
                load.stop()
        t1 = time.time()
        cpu1, ha_events = self.procs.cpu(), self.ledger.events - ha0
        mqtt_msgs = mqtt_load.sent if pipe else len(mqtt_load.accepted)
        backlog_end = self.pipeline.backlog()
        time.sleep(3)                                     # the last probes land
        total = max(1, ha_events + mqtt_msgs)
        per_role_events = {"mqtt": mqtt_msgs, "ha": ha_events, "writer": total, "run": total,
                           "influxd": total, "mosquitto": mqtt_msgs, "homeassistant": ha_events}
        cpu = {role: round((cpu1[role] - cpu0[role]) / max(1, per_role_events[role]) * 1000, 4)
               for role in cpu1 if role in cpu0}
        return {"ha_events_per_s": round(ha_events / (t1 - t0), 1),
                "mqtt_msgs_per_s": round(mqtt_msgs / (t1 - t0), 1),
                "latency": self.probes.latencies(t0 + 2, t1),
                "cpu_s_per_1000_events": cpu, "rss_mb_max": self.procs.reset_rss(),
                "backlog_at_end": backlog_end}

    def ramp(self, rates=(1000, 2000, 4000, 8000, 12000, 16000, 24000, 32000),
             seconds: float = 15) -> dict:
        steps, best = [], None
        for rate in rates:
            r = self.steady(f"ramp-{rate}", 0, rate, seconds, pipe=True)
            p99 = r["latency"]["mqtt"]["p99_s"]
            bounded = (p99 is not None and p99 <= P99_BOUND_S
                       and r["backlog_at_end"] <= 2 * rate and not r["latency"]["mqtt"]["not_seen"])
            steps.append({"offered": rate, "achieved": r["mqtt_msgs_per_s"], "p99_s": p99,
                          "backlog_at_end": r["backlog_at_end"], "bounded": bounded})
            self.log(f"  ramp {rate}/s: achieved {r['mqtt_msgs_per_s']}/s, p99 {p99} s, "
                     f"backlog {r['backlog_at_end']}")
            if not bounded:
                break
            best = r["mqtt_msgs_per_s"]
            self._wait_drained()
        return {"steps": steps, "max_bounded_msgs_per_s": best}

    def _wait_drained(self, timeout: float = 300) -> float:
        started = time.monotonic()
        while self.pipeline.backlog() > 0 and time.monotonic() - started < timeout:
            time.sleep(0.25)
        return time.monotonic() - started

    def backlog(self, n: int) -> dict:
        """Writer stopped, ``n`` MQTT messages queued, writer released: bytes/event, drain rate."""
        self.log(f"backlog: writer stopped, publishing {n} messages")
        self._wait_drained()
        before = self.pipeline.depth()["mqtt"]
        writer = self.pipeline.signal_child("writer", signal.SIGSTOP)
        self.procs.reset_rss()
        try:
            publish_rate = flood(self.mosquitto.port, n, self.topics)
            deadline = time.monotonic() + 600
            while self.pipeline.backlog() < n and time.monotonic() < deadline:
                time.sleep(0.5)
            status = self.pipeline.depth()["mqtt"]
        finally:
            filled_rss = self.procs.reset_rss()
            os.kill(writer, signal.SIGCONT)
        queued = status.ready + status.in_flight
        drain_s = self._wait_drained(900)
        drain_rss = self.procs.reset_rss()
        self.log(f"  {queued} queued, {status.bytes - (before.bytes if before else 0)} bytes; "
                 f"drained in {drain_s:.1f} s")
        return {"published_per_s": round(publish_rate), "queued_events": queued,
                "queue_bytes": status.bytes,
                "queue_bytes_per_event": round((status.bytes - (before.bytes if before else 0))
                                               / max(1, queued), 1),
                "drain_s": round(drain_s, 1), "drain_events_per_s": round(queued / drain_s),
                "rss_mb_while_filling": filled_rss, "rss_mb_while_draining": drain_rss,
                "writer_peak_rss_mb_vmhwm": round(
                    procfs.memory(self.pipeline.child("writer")).peak_rss_bytes / 2**20, 1)}

    def run(self, backlog_events: int) -> dict:
        r = self.results
        r["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "kernel": platform.release(), "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                             time.gmtime())}
        self.log("ceiling: InfluxDB ingest")
        r["ceiling_influx_points_per_s"] = round(influx_ceiling(self.influx))
        self.log("ceiling: bare paho subscriber")
        r["ceiling_paho"] = paho_ceiling(self.mosquitto)
        r["steady_100"] = self.steady("steady-100", 50, 50, self.seconds)
        r["steady_1000"] = self.steady("steady-1000", 200, 800, self.seconds)
        r["ramp"] = self.ramp()
        r["backlog"] = self.backlog(backlog_events)
        self.log("ceiling: HA unpaced")
        r["ceiling_ha_state_changed_per_s"] = round(ha_ceiling(self.ha))
        return r


def markdown(r: dict) -> str:
    s100, s1000, back = r["steady_100"], r["steady_1000"], r["backlog"]
    lat = lambda s, src: f"{s['latency'][src]['p50_s']} / {s['latency'][src]['p99_s']}"  # noqa: E731
    cpu = s1000["cpu_s_per_1000_events"]
    rss = {k: max(s100["rss_mb_max"].get(k, 0), s1000["rss_mb_max"].get(k, 0),
                  back["rss_mb_while_filling"].get(k, 0), back["rss_mb_while_draining"].get(k, 0))
           for k in ("mqtt", "ha", "writer", "run")}
    rows = [
        ("latency p50 / p99, 100 events/s (50 HA + 50 MQTT): HA", f"{lat(s100, 'ha')} s",
         f"p99 <= {P99_BOUND_S} s"),
        ("... MQTT", f"{lat(s100, 'mqtt')} s", ""),
        ("latency p50 / p99, 1 000 events/s (200 HA + 800 MQTT): HA", f"{lat(s1000, 'ha')} s",
         f"p99 <= {P99_BOUND_S} s"),
        ("... MQTT", f"{lat(s1000, 'mqtt')} s", ""),
        ("max MQTT rate with p99 <= 1.5 s and a flat queue", f"{r['ramp']['max_bounded_msgs_per_s']} msgs/s",
         f"bare paho subscriber: {r['ceiling_paho']['msgs_per_s']} msgs/s; "
         f"InfluxDB: {r['ceiling_influx_points_per_s']} points/s"),
        ("HA events/s sustained in the 1 000/s run", f"{s1000['ha_events_per_s']}",
         f"HA itself, unpaced: {r['ceiling_ha_state_changed_per_s']} state_changed/s"),
        ("CPU s per 1 000 events (1 000/s run): MQTT collector", f"{cpu.get('mqtt')}",
         f"bare paho subscriber: {r['ceiling_paho']['cpu_s_per_1000']}"),
        ("... HA collector", f"{cpu.get('ha')}", f"Home Assistant itself: {cpu.get('homeassistant')}"),
        ("... writer", f"{cpu.get('writer')}", f"InfluxDB itself: {cpu.get('influxd')}"),
        ("... supervisor (`run`)", f"{cpu.get('run')}", ""),
        ("peak RSS MB: MQTT collector / HA collector / writer / supervisor",
         f"{rss['mqtt']} / {rss['ha']} / {rss['writer']} / {rss['run']}",
         f"<= 80; bare paho subscriber: {r['ceiling_paho']['rss_mb']}"),
        ("queue bytes on disk per event", f"{back['queue_bytes_per_event']}", ""),
        (f"drain of a {back['queued_events']:,}-event backlog", f"{back['drain_events_per_s']} events/s "
         f"({back['drain_s']} s)", f"InfluxDB ingest: {r['ceiling_influx_points_per_s']} points/s"),
        ("writer RSS while draining it (VmHWM)", f"{back['writer_peak_rss_mb_vmhwm']} MB", "<= 80"),
    ]
    out = ["| figure | result | ceiling / target (same run) |", "|---|---|---|"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--backlog", type=int, default=1_000_000)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ha-ingestor-e2e-"))
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    signal.signal(signal.SIGTERM, lambda signum, _f: sys.exit(128 + signum))  # unwind: stop servers
    bench = Bench(workdir, args.seconds, log)
    try:
        bench.setup()
        results = bench.run(args.backlog)
    finally:
        bench.teardown()
    print(markdown(results))
    print(json.dumps(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
