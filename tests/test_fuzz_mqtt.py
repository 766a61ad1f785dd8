"""Property-based: any MQTT message, through the real pipeline, lands as documented or is a dead
letter with a reason; no process exits.

Hypothesis draws the messages (topic levels with any character Mosquitto accepts: spaces,
commas, '=', quotes, backslashes, empty levels, any Unicode; payloads of arbitrary bytes, JSON
with awkward keys and strings, lone-surrogate escapes, deep nesting, huge numbers, NaN and
Infinity, ``time`` keys, plain numbers and text). Each is published to real Mosquitto as
``fz/<index>/<measurement level>/<rest>``; two pipelines take them at once: ``collect mqtt`` →
queue → ``write`` → InfluxDB 1.6.7, and the same into VictoriaMetrics through the v2 API. Every
example is then read back from InfluxDB and judged against docs/schema.md
(``tests.support.schema_oracle``, under the rule ``fz/+i/+m/#rest`` → measurement ``{m}``, tag
``i``); VictoriaMetrics must hold the same numbers (for names its own line-protocol parser reads
like InfluxDB: no backslash or double quote).

Topics with control characters never reach a collector: Mosquitto refuses them from the
publisher (and MQTT itself forbids ``+`` and ``#``), so the generator leaves them out.
"""

from __future__ import annotations

import math
import unicodedata

import pytest

from ha_ingestor import queue
from tests.support.fixtures_mosquitto import publish
from tests.support.fuzz import Judge, draw, field_type_conflict, fuzz_examples, fuzz_seed
from tests.support.fuzz_strategies import mqtt_messages
from tests.support.influx_readback import read_points
from tests.support.procs import stop_process, tail, wait_until
from tests.support.schema_oracle import Point, mqtt_point

pytestmark = [pytest.mark.fuzz, pytest.mark.slow]

DB = "fuzz"
RULE = {"topic": "fz/+i/+m/#rest", "measurement": "{m}", "tags": {"i": "{i}"}}
# The cases the issue measured, always among the examples: (measurement level, rest, payload)
NAMED = [
    ("deep", "", b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}"),
    ("surrogate", "", b'{"a": "\\ud800"}'),
    ("swallow", "", b'{"g\\\\": 4, "q\\"q": 6}'),
    ("m\\", "", b"1"),
    ("topic", "ends\\", b"2"),
    ("time", "", b'{"time": 1700000000}'),
    ("sensors", "back\\slash", b"21.5"),
    ("newline", "", b'{"s": "two\\nlines"}'),
    ("merged", "", b'{"k\\\\": 0.19, "temp": "\\\\"}'),
    ("big", "", b'{"n": ' + b"9" * 400 + b', "f": 1e400, "x": NaN}'),
    ("binary", "", b"\xff\xd8\xff\xe0"),
]


def pipeline(ingestor, name, mosquitto, influx: dict):
    ing = ingestor({"mqtt": {"enabled": True, "host": "127.0.0.1", "port": mosquitto.port,
                             "client_id": f"fuzz-{name}", "topics": ["fz/#"]},
                    "influxdb": {"batch_size": 5000, "flush_interval": "200ms", **influx},
                    "schema": {"mqtt": {"rules": [RULE]}}}, name=name)
    procs = [ing.start("collect", "mqtt", log="mqtt"), ing.start("write", log="writer")]
    return ing, procs


def test_any_mqtt_message_lands_as_documented_or_is_a_dead_letter(
        mosquitto, influxdb, victoriametrics, ingestor, tmp_path):
    at_seed, count = fuzz_seed(), fuzz_examples()
    drawn = draw(mqtt_messages(), count, at_seed)
    examples = NAMED + drawn
    influxdb.create_database(DB)
    a, a_procs = pipeline(ingestor, "influx", mosquitto, {"api": "v1", "url": influxdb.url,
                                                          "database": DB})
    b, b_procs = pipeline(ingestor, "victoria", mosquitto, {
        "api": "v2", "url": victoriametrics.url, "org": "o", "bucket": "b", "token": "t"})
    for ing in (a, b):
        wait_until(lambda: ing.ready("mqtt"), 30, "collector connected")

    topics = [f"fz/{i}/{m}" + (f"/{rest}" if rest else "") for i, (m, rest, _) in
              enumerate(examples)]
    publish(mosquitto.port, len(examples) + 1, topics=topics + ["fz/end/end"],
            payloads=[p for _, _, p in examples] + [b"1"], timeout=300)
    wait_until(lambda: bool(influxdb.query('SELECT count("value") FROM "end"', DB)), 300,
               "the last message in InfluxDB", interval=0.5)
    wait_until(lambda: victoriametrics.count('{__name__="end_value"}') == 1, 120,
               "the last message in VictoriaMetrics")

    expected = [mqtt_point(t, p, m, {"i": str(i)}) for i, (t, (m, _, p)) in
                enumerate(zip(topics, examples))]
    judge = Judge("mqtt", tmp_path, at_seed)
    points = by_index(read_points(influxdb, DB))
    dead = dead_by_index(a.queue_dir)
    for i, example in enumerate(examples):
        judge.check(i, (topics[i], example[2]), expected[i], points.get(i, []), dead.get(i, []),
                    lambda i=i: field_type_conflict(expected, i))
    same_numbers_in_victoriametrics(judge, victoriametrics, expected, points)

    for proc in a_procs + b_procs:      # no process exited, and each stops cleanly
        assert proc.poll() is None, tail(a.log_path("writer")) + tail(a.log_path("mqtt"))
        assert stop_process(proc, timeout=30) == 0
    judge.finish(len(examples))
    assert judge.counts.get("landed as documented", 0) > len(examples) // 5   # not vacuous


def by_index(points: dict) -> dict[int, list[tuple]]:
    found: dict[int, list[tuple]] = {}
    for (measurement, tags, _time), fields in points.items():
        index = dict(tags).get("i", "")
        if index.isdigit():
            found.setdefault(int(index), []).append((measurement, dict(tags), fields))
    return found


def dead_by_index(queue_dir) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for letter in queue.list_dead(queue_dir, "mqtt"):
        parts = str(letter.event.get("topic", "")).split("/")
        if len(parts) > 1 and parts[0] == "fz" and parts[1].isdigit():
            found.setdefault(int(parts[1]), []).append(letter.reason)
    return found


def same_numbers_in_victoriametrics(judge: Judge, vm, expected: list, points: dict) -> None:
    """VictoriaMetrics keeps numbers only, as ``<measurement>_<field>`` with the tags as labels,
    and about 12 significant digits of each (its storage is decimal; subnormal numbers read 0)."""
    stored: dict[tuple, list[float]] = {}
    for series in vm_export(vm, '{i=~"[0-9]+"}'):
        labels = series["metric"]
        stored[(labels["__name__"], labels["i"])] = series["values"]
    checked = 0
    for i, point in enumerate(expected):
        if not isinstance(point, Point) or i not in points or not _plain(point):
            continue
        for key, value in point.fields.items():
            if isinstance(value, float):
                checked += 1
                got = stored.get((f"{point.measurement}_{key}", str(i)))
                if not (got and len(got) == 1 and math.isclose(got[0], value, rel_tol=1e-11,
                                                               abs_tol=1e-300)):
                    judge.failures.append({"index": i, "problem": "VictoriaMetrics differs",
                                           "expected": [point.measurement, key, value],
                                           "found": got})
    judge.counts["numbers checked in VictoriaMetrics"] = checked
    assert checked >= len(expected) // 20, f"only {checked} numbers to compare in VictoriaMetrics"


def vm_export(vm, match: str) -> list[dict]:
    """/api/v1/export, read where VictoriaMetrics writes +Inf, -Inf, NaN (not JSON): it turns
    string fields that look like numbers ("inf") into samples."""
    import json
    import re
    import urllib.parse
    import urllib.request
    vm.flush()
    url = f"{vm.url}/api/v1/export?" + urllib.parse.urlencode({"match[]": match, "start": "0"})
    text = urllib.request.urlopen(url, timeout=60).read().decode()
    return [json.loads(re.sub(r"(?<=[\[,])([+-]Inf|NaN)(?=[,\]])",
                              lambda m: json.dumps(m.group(1)), line))
            for line in text.split("\n") if line.strip()]


def _plain(point: Point) -> bool:
    names = "".join([point.measurement, *point.tags.values(), *point.fields])
    return "\\" not in names and '"' not in names and \
        not any(unicodedata.category(ch) in ("Cc", "Cs") for ch in names)
