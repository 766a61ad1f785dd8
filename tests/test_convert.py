"""``ha-ingestor convert`` prints what the writer writes: the same events go through
``convert`` (its lines written straight to one database of InfluxDB 1.6.7) and through the queue
and ``ha-ingestor write`` (into another); both databases must hold the same points, and the events
convert calls dead letters must be the writer's dead letters, with the same reasons. Real HA frames
of both tested releases, mqtt_statestream lines, preset topics, and generated events
(hypothesis, with the fuzz suite's awkward names and values). ``queue peek --lines`` prints the
same lines for queued events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ha_ingestor.envelope import ha_event, mqtt_event
from ha_ingestor.queue import Producer
from tests.support import fuzz_strategies as fs
from tests.support.procs import wait_until
from tests.test_schema_ha import state_event

CLI = [sys.executable, "-m", "ha_ingestor"]
SAMPLES = Path(__file__).parent / "data" / "ha-samples"
SCHEMA = {"mqtt": {"presets": ["zigbee2mqtt", "tasmota", "mqtt_statestream"]}}


def run_cli(config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Output decoded as UTF-8 without newline translation: a \r inside a line stays one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HA_INGESTOR_")}
    done = subprocess.run(CLI + ["--config", str(config), *args], capture_output=True,
                          input=None if stdin is None else stdin.encode(), timeout=120, env=env)
    done.stdout, done.stderr = done.stdout.decode("utf-8"), done.stderr.decode("utf-8")
    return done


def predicted(config: Path, envelopes: list[dict]) -> tuple[list[str], list[str]]:
    """(lines, dead-letter reasons) as `convert` prints them for queue-peek-style JSON lines."""
    done = run_cli(config, "convert", stdin="\n".join(json.dumps(e) for e in envelopes))
    assert done.returncode in (0, 1), done.stderr
    out = [line for line in done.stdout.split("\n")[:-1]      # only \n ends a line
           if not line.startswith("# stdin #")]
    lines = [line for line in out if not line.startswith("#")]
    dead = [line.removeprefix("# dead letter: ") for line in out
            if line.startswith("# dead letter: ")]
    assert done.returncode == (1 if dead else 0)
    return lines, dead


def written(ingestor, influxdb, source: str, envelopes: list[dict], name: str,
            converter_process: str = "no"):
    """The events through the queue and `ha-ingestor write`: (the harness, dead letters)."""
    ing = ingestor({"influxdb": {"url": influxdb.url, "database": f"{name}_writer",
                                 "flush_interval": "100ms",
                                 "converter_process": converter_process},
                    "schema": SCHEMA}, name=name)
    influxdb.create_database(f"{name}_writer")
    producer = Producer(ing.queue_dir, source, max_bytes=2**30)
    producer.append(envelopes)
    producer.close()
    ing.start("write", log="writer")

    def drained() -> bool:
        status = json.loads(run_cli(ing.config_path, "queue", "status", "--json").stdout)
        return status["queues"][source]["ready"] == 0 and \
            status["queues"][source]["in_flight"] == 0
    wait_until(drained, 60, "the writer drained the queue")
    ing.stop_all()
    dead = json.loads("[" + ",".join(run_cli(ing.config_path, "queue", "dead", "--json")
                                     .stdout.split("\n")[:-1]) + "]")
    return ing, dead


def assert_same_points(influxdb, a: str, b: str) -> None:
    counts = influxdb.series_counts(a)
    assert counts == influxdb.series_counts(b)
    for measurement in {m for m, _tags in counts}:
        name = measurement.replace("\\", "\\\\").replace('"', '\\"')
        query = f'SELECT * FROM "{name}" GROUP BY *'
        assert influxdb.query(query, a) == influxdb.query(query, b), measurement


def check(ingestor, influxdb, source: str, envelopes: list[dict], name: str,
          converter_process: str = "no") -> None:
    ing, dead = written(ingestor, influxdb, source, envelopes, name, converter_process)
    lines, reasons = predicted(ing.config_path, envelopes)
    influxdb.create_database(f"{name}_convert")
    if lines:
        try:
            influxdb.write(f"{name}_convert", "\n".join(lines))
        except RuntimeError as exc:        # InfluxDB refuses some (type conflicts): as for the
            assert "partial write" in str(exc), exc        # writer, the rest is stored
    conversion_dead = sorted(d["reason"] for d in dead if d["reason"].startswith("conversion"))
    assert conversion_dead == sorted(reasons)
    assert_same_points(influxdb, f"{name}_writer", f"{name}_convert")


def sample_envelopes() -> tuple[list[dict], list[dict]]:
    frames = [json.loads(p.read_text()) for p in sorted(SAMPLES.glob("event_*.json"))]
    frames += [json.loads(p.read_text()) for p in sorted((SAMPLES / "2025.4.4")
                                                       .glob("event_*.json"))]
    ha = [ha_event(f["event"], received_ns=1_700_000_000_000_000_000 + i)
          for i, f in enumerate(frames)]
    mqtt = []
    lines = (SAMPLES / "mqtt_statestream.txt").read_text().splitlines()
    lines += ["zigbee2mqtt/kitchen\t{\"temperature\": 21.5, \"battery\": 90, \"state\": \"ON\"}",
              "tele/plug/SENSOR\t{\"ENERGY\": {\"Total\": 100.5, \"Power\": 12}}",
              "stat/plug/POWER\tON", "plain/topic\t{\"nested\": {\"deep\": [1, 2]}}"]
    for i, line in enumerate(lines):
        topic, payload = line.split("\t", 1)
        mqtt.append(mqtt_event(topic, payload.encode(), 1, i % 5 == 0,
                               1_700_000_000_000_000_000 + i))
    mqtt.append(mqtt_event("bin/ary", b"\xff\xfe\x00", 1, False, 1_700_000_000_000_000_999))
    return ha, mqtt


@pytest.mark.parametrize("converter_process", ["no", "yes"])
@pytest.mark.parametrize("source", ["ha", "mqtt"])
def test_convert_prints_what_the_writer_writes_for_real_events(ingestor, influxdb, source,
                                                               converter_process):
    """Both ways the writer converts: in its own thread, and in a converter process."""
    ha, mqtt = sample_envelopes()
    check(ingestor, influxdb, source, ha if source == "ha" else mqtt,
          f"samples_{source}_{converter_process}", converter_process)


def test_queue_peek_lines_are_convert_lines(ingestor):
    ha, mqtt = sample_envelopes()
    ing = ingestor({"schema": SCHEMA})
    for source, envelopes in (("ha", ha), ("mqtt", mqtt)):
        producer = Producer(ing.queue_dir, source, max_bytes=2**30)
        producer.append(envelopes)
        producer.close()
    peek = run_cli(ing.config_path, "queue", "peek", "--lines", "-n", "1000")
    assert peek.returncode == 0, peek.stderr
    shown = [line.strip() for line in peek.stdout.splitlines() if line.startswith("    ")]
    expected = []
    for envelopes in (mqtt, ha):
        done = run_cli(ing.config_path, "convert",
                       stdin="\n".join(json.dumps(e) for e in envelopes))
        expected += [line for line in done.stdout.splitlines()
                     if not line.startswith("# stdin #")]
    assert shown == expected


def test_convert_reads_frames_files_and_mqtt_arguments(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("schema: {mqtt: {presets: [zigbee2mqtt]}}\n")
    done = run_cli(config, "convert", str(SAMPLES / "event_state_changed_counter.json"),
                   str(SAMPLES / "pong.json"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1].startswith(
        "counter.acc_counter,domain=counter,entity_id=acc_counter ")
    assert "pong.json #1: skipped, a 'pong' frame carries no event" in done.stdout
    done = run_cli(config, "convert", "mqtt", "zigbee2mqtt/hall", '{"temperature": 20}',
                   "--time", "5")
    assert done.stdout.splitlines()[1] == \
        "zigbee2mqtt,device=hall,retained=false,topic=zigbee2mqtt/hall temperature=20.0 5"
    done = run_cli(config, "convert", stdin="{not json")
    assert done.returncode == 2 and "stdin is not JSON at line 1" in done.stderr


# ---- generated events ---------------------------------------------------------------------------

ENTITY = st.sampled_from(["sensor.temp", "switch.plug", "input_number.x", "sensor.t_2"])


@st.composite
def ha_envelopes(draw):
    count = draw(st.integers(5, 30))
    out = []
    for i in range(count):
        stamp = f"2026-11-27T15:57:{i:02d}.{draw(st.integers(0, 999999)):06d}+00:00"
        if draw(st.booleans()):
            event = state_event(draw(ENTITY), draw(fs.states(surrogates=True)),
                                draw(fs.attributes(surrogates=True)), stamp)
        else:
            event = {"event_type": draw(st.sampled_from(["call_service", "custom", "x y"])),
                     "data": draw(fs.event_data(surrogates=True)), "origin": "LOCAL",
                     "time_fired": stamp,
                     "context": {"id": "c1", "parent_id": None, "user_id": None}}
        out.append(ha_event(event, received_ns=i))
    return out


@st.composite
def mqtt_envelopes(draw):
    messages = draw(st.lists(fs.mqtt_messages(), min_size=5, max_size=30))
    return [mqtt_event(f"fz/{i}/{level}" + (f"/{rest}" if rest else ""), payload, 1,
                       draw(st.booleans()), 1_700_000_000_000_000_000 + i)
            for i, (level, rest, payload) in enumerate(messages)]


@pytest.mark.parametrize("source", ["ha", "mqtt"])
def test_convert_equals_the_writer_for_generated_events(ingestor, influxdb, source):
    examples = iter(range(1000))
    strategy = ha_envelopes() if source == "ha" else mqtt_envelopes()

    @settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
    @given(envelopes=strategy)
    def same(envelopes):
        check(ingestor, influxdb, source, envelopes, f"gen_{source}_{next(examples)}")

    same()
