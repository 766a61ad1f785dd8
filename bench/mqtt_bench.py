"""MQTT collector benchmark: what ``ha-ingestor collect mqtt`` commits durably per second while a
publisher floods a real Mosquitto, next to a bare paho subscriber (that only counts) measured the
same way in the same run.

    .venv/bin/python bench/mqtt_bench.py [--messages 200000] [--rounds 1] [--json out.json]
                                         [--protocol 3.1.1|5] [--broker-max-inflight 1000]

For each QoS (1, then 0) and each round: a bare paho subscriber process, then the collector (the
CLI, its own process), each connected before the flood starts. The flood is ``--messages``
zigbee2mqtt-like JSON payloads (about 100 bytes) published by four ``mosquitto_pub -l`` processes
(the C client: a Python publisher would be the bottleneck). Rates run from the first message
received (bare) or committed (collector) to the last; the collector's count is read from its
/metrics (``ha_ingestor_events_committed_total``), sampled every 50 ms. RSS is the collector's
peak (VmHWM). The broker is the project's own test Mosquitto (persistence on,
max_inflight_messages 1000, max_queued_messages raised) on a free port, data in a temporary dir.

Prints one JSON line: qos1_msgs_per_s, qos0_msgs_per_s, rss_mb, bare_paho_qos1_msgs_per_s,
bare_paho_qos0_msgs_per_s, qos1_ratio, qos0_ratio (medians over the rounds) and the raw rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.fixtures_mosquitto import MosquittoServer  # noqa: E402
from tests.support.procs import free_port, stop_process, wait_until  # noqa: E402

TOPICS = [f"zigbee2mqtt/bench_sensor_{i}" for i in range(4)]

BARE_SUBSCRIBER = r"""
import sys, time, paho.mqtt.client as mqtt
port, want, qos, v5 = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "5"
state = {"n": 0, "first": None, "last": None}
def on_message(c, u, m):
    n = state["n"] = state["n"] + 1
    if n == 1:
        state["first"] = time.perf_counter()
    if n >= want:
        state["last"] = time.perf_counter()
        c.disconnect()
def on_connect(c, u, f, rc, p):
    c.subscribe("zigbee2mqtt/#", qos)
    print("ready", flush=True)
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-bare",
                protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                **({} if v5 else {"clean_session": True}))
c.on_message, c.on_connect = on_message, on_connect
c.connect("127.0.0.1", port)
c.loop_forever()
n, first, last = state["n"], state["first"], state["last"]
print(f"{(n - 1) / (last - first):.0f} {n}", flush=True)
"""


def payload(i: int) -> str:
    return json.dumps({"temperature": round(15 + (i % 1500) / 100, 2), "humidity": 45.5,
                       "battery": 90, "linkquality": 100, "seq": i})


def write_flood_files(workdir: Path, n: int) -> list[Path]:
    per = [n // len(TOPICS) + (1 if i < n % len(TOPICS) else 0) for i in range(len(TOPICS))]
    files, start = [], 0
    for i, count in enumerate(per):
        path = workdir / f"flood{i}.txt"
        path.write_text("".join(payload(j) + "\n" for j in range(start, start + count)))
        files.append(path)
        start += count
    return files


def flood(port: int, files: list[Path], qos: int) -> list[subprocess.Popen]:
    binary = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"
    return [subprocess.Popen([binary, "-h", "127.0.0.1", "-p", str(port), "-q", str(qos),
                              "-t", topic, "-l", "-i", f"bench-flood-{i}-{os.getpid()}"],
                             stdin=open(path), stdout=subprocess.DEVNULL)
            for i, (topic, path) in enumerate(zip(TOPICS, files))]


def wait_all(procs: list[subprocess.Popen], timeout: float = 600) -> None:
    for proc in procs:
        proc.wait(timeout)


def bare_paho(port: int, files: list[Path], n: int, qos: int, protocol: str) -> float:
    proc = subprocess.Popen([sys.executable, "-c", BARE_SUBSCRIBER, str(port), str(n), str(qos),
                             protocol],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.3)  # the SUBACK
    publishers = flood(port, files, qos)
    out, _ = proc.communicate(timeout=600)
    wait_all(publishers)
    rate, got = out.split()
    assert int(got) >= n, f"bare subscriber got {got} of {n}"
    return float(rate)


def committed(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith('ha_ingestor_events_committed_total{source="mqtt"}'):
                return float(line.split()[-1])
    return 0.0


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def collector(workdir: Path, port: int, files: list[Path], n: int, qos: int,
              name: str, protocol: str = "3.1.1") -> tuple[float, float]:
    import yaml
    metrics_port = free_port()
    config = {"queue": {"dir": str(workdir / name / "queue")},
              "mqtt": {"enabled": True, "host": "127.0.0.1", "port": port, "qos": qos,
                       "protocol": protocol,
                       "client_id": f"bench-{name}", "topics": ["zigbee2mqtt/#"]},
              "homeassistant": {"enabled": False},
              "metrics": {"enabled": True, "ports": {"mqtt": metrics_port}}}
    (workdir / name).mkdir(parents=True)
    config_path = workdir / name / "ha-ingestor.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log = open(workdir / name / "collector.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "ha_ingestor", "--config", str(config_path),
                             "collect", "mqtt"], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_until(lambda: "subscribed to" in (workdir / name / "collector.log").read_text(),
                   30, "collector subscribed")
        publishers = flood(port, files, qos)
        first = last = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            count, now = committed(metrics_port), time.perf_counter()
            if count and first is None:
                first = (now, count)
            if count >= n:
                last = (now, count)
                break
            time.sleep(0.05)
        wait_all(publishers)
        rss = peak_rss_mb(proc.pid)
        if last is None:
            raise RuntimeError(f"collector committed {committed(metrics_port):.0f} of {n}")
        return (last[1] - first[1]) / (last[0] - first[0]), rss
    finally:
        stop_process(proc, timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--protocol", choices=["3.1.1", "5"], default="3.1.1",
                        help="MQTT protocol of the collector and of the bare subscriber")
    parser.add_argument("--broker-max-inflight", type=int, default=1000,
                        help="Mosquitto's max_inflight_messages (its default is 20)")
    args = parser.parse_args()
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    rounds = []
    with tempfile.TemporaryDirectory(prefix="mqtt-bench-") as tmp:
        workdir = Path(tmp)
        broker = MosquittoServer(binary, workdir / "broker",
                                 max_inflight_messages=args.broker_max_inflight).start()
        try:
            files = write_flood_files(workdir, args.messages)
            for r in range(args.rounds):
                result = {}
                for qos in (1, 0):
                    result[f"bare_paho_qos{qos}_msgs_per_s"] = bare_paho(
                        broker.port, files, args.messages, qos, args.protocol)
                    rate, rss = collector(workdir, broker.port, files, args.messages, qos,
                                          f"r{r}q{qos}", args.protocol)
                    result[f"qos{qos}_msgs_per_s"] = rate
                    result[f"rss_mb_qos{qos}"] = rss
                rounds.append(result)
                print(json.dumps({"round": r, **{k: round(v, 1) for k, v in result.items()}}),
                      file=sys.stderr, flush=True)
        finally:
            broker.kill()

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    summary = {
        "qos1_msgs_per_s": round(med("qos1_msgs_per_s")),
        "qos0_msgs_per_s": round(med("qos0_msgs_per_s")),
        "rss_mb": round(max(max(r["rss_mb_qos1"], r["rss_mb_qos0"]) for r in rounds), 1),
        "bare_paho_qos1_msgs_per_s": round(med("bare_paho_qos1_msgs_per_s")),
        "bare_paho_qos0_msgs_per_s": round(med("bare_paho_qos0_msgs_per_s")),
        "qos1_ratio": round(statistics.median(r["qos1_msgs_per_s"] / r["bare_paho_qos1_msgs_per_s"]
                                              for r in rounds), 3),
        "qos0_ratio": round(statistics.median(r["qos0_msgs_per_s"] / r["bare_paho_qos0_msgs_per_s"]
                                              for r in rounds), 3),
        "messages": args.messages, "rounds": len(rounds), "protocol": args.protocol,
        "broker_max_inflight_messages": args.broker_max_inflight,
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "raw": rounds,
    }
    line = json.dumps(summary)
    print(line, flush=True)
    if args.json:
        args.json.write_text(line + "\n")


if __name__ == "__main__":
    main()
