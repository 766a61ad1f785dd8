"""`ha-ingestor import history`, `import statistics` and `verify` against a real Home Assistant
(every tested release: 2024.3.3 and 2025.4.4) whose recorder the test fills, with HA's own `influxdb` integration writing the same
state changes live into another database of the same InfluxDB 1.6.7 (as the parity tests do).

State changes cannot be recorded in the past through HA's API, so they span seconds, not hours;
the import reads them in windows of one second (`import.window: 1s`) and entity chunks of a few
entities, which exercises the same window and chunk logic a long import uses.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import time
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import strategies as st

from ha_ingestor import queue
from tests.support.fixtures_homeassistant import ha_venv_or_skip
from tests.support.fixtures_influx import InfluxServer
from tests.support.fixtures_ingestor import IngestorHarness
from tests.support.fuzz import Judge, draw, field_type_conflict, fuzz_examples, fuzz_seed
from tests.support.fuzz_strategies import TEXT, attributes, states
from tests.support.influx_readback import read_points
from tests.support.procs import stop_process, tail, wait_until
from tests.support.real_ha import HomeAssistantServer
from tests.support.schema_oracle import Dead, Point, ha_stored, state_changed_point
from tests.test_fuzz_ha import rest_states
from tests.test_writer_parity_ha import OPTIONS, ha_yaml

pytestmark = [pytest.mark.slow, pytest.mark.realha]

STAT_DAYS = 35
STATISTICS = {"sensor.acc_energy": ("recorder", "kWh", "sum"),
              "ha_ingestor_test:outdoor": ("ha_ingestor_test", "°C", "mean")}
ENTITIES = ("input_*", "counter.*", "sensor.acc_*", "automation.*")
def _stat_row(kind: str, start: datetime, hour: int) -> dict:
    if kind == "sum":
        return {"start": start.isoformat(), "state": 100.0 + hour * 0.5, "sum": hour * 0.5,
                "last_reset": None}
    return {"start": start.isoformat(), "mean": 10 + (hour % 24) / 4,
            "min": 5 + (hour % 24) / 4, "max": 15.25 + (hour % 24) / 4}


def drive(client, rounds: int) -> None:
    calls = [("input_boolean", "toggle", "input_boolean.acc_switch_1", {}),
             ("input_number", "set_value", "input_number.acc_temp_1", {"value": 21.5}),
             ("input_number", "set_value", "input_number.acc_temp_2", {"value": -3.25}),
             ("input_number", "set_value", "input_number.acc_humidity", {"value": 55}),
             ("input_text", "set_value", "input_text.acc_note", {"value": 'a, b = "c" \\ d'}),
             ("input_select", "select_option", "input_select.acc_mode", {"option": "away"}),
             ("counter", "increment", "counter.acc_counter", {}),
             ("input_boolean", "toggle", "input_boolean.acc_switch_2", {})]
    modes = ["eco", "comfort", "away", "boost"]
    for round_ in range(rounds):
        for domain, service, entity_id, data in calls:
            if service == "set_value" and domain == "input_number":
                data = {"value": data["value"] + round_}
            elif service == "set_value":
                data = {"value": f"{data['value']} {round_}"}
            elif service == "select_option":
                data = {"option": modes[round_ % 4]}
            client.call_service(domain, service, data, target={"entity_id": entity_id})
            time.sleep(0.05)


def rows(influx, db: str, since_ns: int = 0) -> dict[tuple, tuple]:
    """(measurement, tags, time) -> fields, of every point in ``db`` from ``since_ns``."""
    found: dict[tuple, tuple] = {}
    for measurement in [r["name"] for r in influx.query("SHOW MEASUREMENTS", db)]:
        escaped = measurement.replace('"', '\\"')
        result = influx._raw_query(f'SELECT * FROM "{escaped}" WHERE time >= {since_ns} '
                                   f'GROUP BY *', db)
        for series in result["results"][0].get("series", []):
            tags = tuple(sorted((series.get("tags") or {}).items()))
            for values in series["values"]:
                record = dict(zip(series["columns"], values))
                stamp = record.pop("time")
                found[(measurement, tags, stamp)] = tuple(sorted(
                    (k, v) for k, v in record.items() if v is not None))
    return found


class Scene:
    """The shared world: InfluxDB, HA with its influxdb integration, the recorded period."""

    def __init__(self, root, version: str):
        self.root = root
        self.influx = InfluxServer(root / "influx").start()
        self.influx.create_database("ha_own")
        self.ha = HomeAssistantServer(root / "ha", extra_yaml=ha_yaml(self.influx.port),
                                      version=version)
        self.since = self.until = None
        self.changes: list[dict] = []

    def record(self) -> None:
        self.ha.start()
        time.sleep(2)
        self.since = datetime.now(timezone.utc)
        with self.ha.client() as client:
            client.subscribe_events("state_changed")
            drive(client, rounds=4)
            while (event := client.recv_event(timeout=3)) is not None:
                self.changes.append(event)
        self.until = datetime.now(timezone.utc)
        time.sleep(2)                      # the recorder commits every second

    def record_statistics(self) -> None:
        """STAT_DAYS of hourly statistics for STATISTICS through recorder/import_statistics."""
        top = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
        self.stats_since = top - timedelta(days=STAT_DAYS, hours=1)
        hours = [self.stats_since + timedelta(hours=h) for h in range(STAT_DAYS * 24)]
        with self.ha.client() as client:
            for statistic_id, (source, unit, kind) in STATISTICS.items():
                stats = [_stat_row(kind, start, h) for h, start in enumerate(hours)]
                client.command({"type": "recorder/import_statistics",
                                "metadata": {"has_mean": kind == "mean",
                                             "has_sum": kind == "sum", "name": None,
                                             "source": source, "statistic_id": statistic_id,
                                             "unit_of_measurement": unit}, "stats": stats})
            wait_until(lambda: len(self.statistics(client)) == len(STATISTICS)
                       and all(len(r) == len(hours) for r in self.statistics(client).values()),
                       60, "imported statistics recorded")

    def statistics(self, client) -> dict[str, list[dict]]:
        return client.command({"type": "recorder/statistics_during_period",
                               "start_time": self.stats_since.isoformat(),
                               "statistic_ids": sorted(STATISTICS), "period": "hour"}) or {}

    def ingestor(self, name: str, database: str, options: dict | None = None,
                 batch_events: int = 1000, **imports) -> IngestorHarness:
        self.influx.create_database(database)
        ing = IngestorHarness(self.root / name, {
            "queue": {"batch_events": batch_events},
            "homeassistant": {"enabled": False, "url": self.ha.ws_url, "token": self.ha.token},
            "influxdb": {"url": self.influx.url, "database": database, "flush_interval": "100ms"},
            "schema": {"state_changed": OPTIONS if options is None else options},
            "import": {"window": "1s", "entities_per_request": 4, **imports}})
        ing.workdir.mkdir(parents=True, exist_ok=True)
        ing.write_config()
        return ing

    def period_args(self) -> list[str]:
        return ["--since", self.since.isoformat(), "--until", self.until.isoformat()] + \
            [arg for pattern in ENTITIES for arg in ("--entity", pattern)]


@pytest.fixture(scope="module")
def scene(ha_version, tmp_path_factory):
    ha_venv_or_skip(ha_version, ("influxdb",))
    world = Scene(tmp_path_factory.mktemp(f"import-{ha_version}"), ha_version)
    try:
        world.record()
        world.record_statistics()
        yield world
    finally:
        world.ha.stop()
        world.influx.stop()


def drain(ing: IngestorHarness, dead_letters_expected: bool = False) -> None:
    """Run the writer until import.db is empty, then stop it."""
    writer = ing.start("write", log="writer")
    try:
        wait_until(lambda: (st := queue.read_status(ing.queue_dir, "import")) is not None
                   and st.ready == 0 and st.in_flight == 0, 90, "import queue drained")
    finally:
        assert stop_process(writer) == 0, tail(ing.log_path("writer"))
    if not dead_letters_expected:
        assert queue.read_status(ing.queue_dir, "import").dead == 0, \
            tail(ing.log_path("writer"))


def import_history(ing: IngestorHarness, scene: Scene, *extra: str):
    result = ing.run("import", "history", *scene.period_args(), *extra, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def queued_changes(ing: IngestorHarness) -> list[tuple[str, str]]:
    return [(e["event"]["data"]["entity_id"], e["event"]["time_fired"])
            for e in ing.read_all("import")]


def test_import_history_writes_the_points_home_assistant_wrote_live(scene):
    """Must show 1 and 2: one point per recorded change, equal to HA's own; a second import of
    the same period changes no count and no value."""
    ing = scene.ingestor("first", "imported")
    result = import_history(ing, scene)
    assert "done:" in result.stdout, result.stdout
    queued = queued_changes(ing)
    assert len(queued) == len(set(queued)), "a change was queued twice"
    wanted = {(e["data"]["entity_id"], e["time_fired"]) for e in scene.changes}
    assert wanted == set(queued), (sorted(wanted - set(queued))[:5], sorted(set(queued) - wanted)[:5])
    drain(ing)

    since_ns = int(scene.since.timestamp() * 1e9)
    ours = rows(scene.influx, "imported")
    theirs = {key: fields for key, fields in rows(scene.influx, "ha_own", since_ns).items()
              if key[2] <= int(scene.until.timestamp() * 1e9)}
    assert len(ours) == len(queued)
    assert set(ours) == set(theirs), (sorted(set(theirs) - set(ours))[:3],
                                      sorted(set(ours) - set(theirs))[:3])
    recorded = recorded_attributes(scene)
    for key, fields in ours.items():
        mine, live = dict(fields), dict(theirs[key])
        assert all(live.get(name) == value for name, value in mine.items()), (key, mine, live)
        absent = set(live) - set(mine)
        entity = f"{dict(key[1])['domain']}.{dict(key[1])['entity_id']}"
        # only what the recorder does not keep (attributes HA marks unrecorded)
        assert not {name.removesuffix("_str") for name in absent} & recorded[entity], \
            (key, absent)

    again = import_history(ing, scene)
    assert "done:" in again.stdout and "continuing" not in again.stdout
    drain(ing)
    assert rows(scene.influx, "imported") == ours

    # an import over what HA's integration already wrote live: nothing changes there
    before = rows(scene.influx, "ha_own")
    on_live = scene.ingestor("onlive", "ha_own")
    import_history(on_live, scene)
    drain(on_live)
    assert rows(scene.influx, "ha_own") == before


def recorded_attributes(scene: Scene) -> dict[str, set[str]]:
    """Per entity, every attribute name the recorder returned in the period."""
    with scene.ha.client() as client:
        answer = client.command({"type": "history/history_during_period",
                                 "start_time": scene.since.isoformat(),
                                 "end_time": scene.until.isoformat(),
                                 "entity_ids": sorted({e["data"]["entity_id"]
                                                       for e in scene.changes}),
                                 "include_start_time_state": False,
                                 "significant_changes_only": False, "no_attributes": False,
                                 "minimal_response": False})
    return {entity: {name for row in rows_ for name in (row.get("a") or {})}
            for entity, rows_ in answer.items()}


def test_import_history_after_sigkill_continues_without_gap_or_duplicate(scene):
    """Must show 3: SIGKILL in the middle of an import, then the same command again."""
    # one entity per request and one event per commit: hundreds of steps and commits, so the kill
    # falls in the middle, often inside a step
    ing = scene.ingestor("killed", "killed", batch_events=1, entities_per_request=1)
    wanted = {(e["data"]["entity_id"], e["time_fired"]) for e in scene.changes}
    proc = ing.start("import", "history", *scene.period_args(), log="import")
    wait_until(lambda: proc.poll() is not None or len(ing.read_all("import")) > 0, 60,
               "first changes queued", interval=0.005)
    os.kill(proc.pid, signal.SIGSTOP)
    stored = len(ing.read_all("import"))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert 0 < stored < len(wanted), f"killed with {stored} of {len(wanted)} queued"

    again = import_history(ing, scene)
    assert "continuing the import stopped at step" in again.stdout, again.stdout
    queued = queued_changes(ing)
    assert len(queued) == len(set(queued)), "a change was queued twice"
    assert set(queued) == wanted


def test_import_history_dry_run_stores_nothing(scene):
    ing = scene.ingestor("dry", "dry")
    result = ing.run("import", "history", *scene.period_args(), "--dry-run", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "nothing stored (--dry-run)" in result.stdout
    assert "input_boolean.acc_switch_1" in result.stdout
    assert queue.read_status(ing.queue_dir, "import") is None


def verify(ing: IngestorHarness, scene: Scene, *extra: str) -> tuple[int, dict]:
    result = ing.run("verify", *scene.period_args(), "--json", *extra, timeout=180)
    assert result.returncode in (0, 5), result.stdout + result.stderr
    return result.returncode, json.loads(result.stdout)


def test_verify_names_what_was_deleted_and_fill_restores_it(scene):
    """Must show 6: points deleted from InfluxDB (a whole series, a time range of another) are
    named exactly by `verify` (exit 5); `verify --fill` queues them; then nothing is missing."""
    ing = scene.ingestor("verify", "verified")
    import_history(ing, scene)
    drain(ing)
    code, report = verify(ing, scene)
    assert code == 0 and report["missing"] == 0 and report["extra"] == 0, report
    assert report["in_ha"] == report["in_influxdb"] == len(scene.changes)

    temp = sorted(e["time_fired"] for e in scene.changes
                  if e["data"]["entity_id"] == "input_number.acc_temp_1")
    cut = temp[1:3]                                  # the 2nd and 3rd of its 4 changes
    switch = [e for e in scene.changes if e["data"]["entity_id"] == "input_boolean.acc_switch_2"]
    influx = scene.influx
    influx._raw_query("DROP SERIES FROM /.*/ WHERE \"entity_id\" = 'acc_switch_2'", "verified")
    influx._raw_query(f"DELETE FROM /.*/ WHERE \"entity_id\" = 'acc_temp_1' AND "
                      f"time >= '{cut[0]}' AND time <= '{cut[1]}'", "verified")

    code, report = verify(ing, scene)
    assert code == 5
    named = {entity: counts for entity, counts in report["entities"].items()
             if counts["missing"]}
    assert set(named) == {"input_boolean.acc_switch_2", "input_number.acc_temp_1"}, named
    assert named["input_boolean.acc_switch_2"]["missing"] == len(switch)
    assert named["input_boolean.acc_switch_2"]["in_influxdb"] == 0
    assert named["input_number.acc_temp_1"]["missing"] == 2
    assert named["input_number.acc_temp_1"]["missing_ranges"] == [cut]
    assert report["missing"] == len(switch) + 2 and report["extra"] == 0

    table = ing.run("verify", *scene.period_args(), timeout=180)
    assert table.returncode == 5
    assert f"missing {cut[0]} .. {cut[1]}" in table.stdout, table.stdout

    code, report = verify(ing, scene, "--fill")
    assert code == 0 and report["filled"] == len(switch) + 2, report
    drain(ing)
    code, report = verify(ing, scene)
    assert code == 0 and report["missing"] == 0 and report["extra"] == 0, report


def test_import_statistics_one_point_per_row_with_the_documented_fields(scene):
    """Must show 4: every statistics row HA returns is one point (measurement = unit, tags
    statistic_id/domain/entity_id/period/source, fields as HA returned them, time = period
    start); a second run changes nothing."""
    ing = scene.ingestor("stats", "stats")
    args = ["import", "statistics", "--since", scene.stats_since.isoformat(), "--period", "hour"]
    args += [arg for sid in STATISTICS for arg in ("--statistic-id", sid)]
    result = ing.run(*args, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    drain(ing)
    with scene.ha.client() as client:
        expected = scene.statistics(client)
    points = rows(scene.influx, "stats")
    assert len(points) == sum(len(r) for r in expected.values()) == len(STATISTICS) * 24 * STAT_DAYS
    for statistic_id, (source, unit, kind) in STATISTICS.items():
        domain, _, object_id = statistic_id.replace(":", ".").partition(".")
        tags = tuple(sorted({"statistic_id": statistic_id, "domain": domain,
                             "entity_id": object_id, "period": "hour",
                             "source": source}.items()))
        for row in expected[statistic_id]:
            key = (unit, tags, int(row["start"]) * 10**6)
            want = {name: float(row[name]) for name in ("mean", "min", "max", "sum", "state")
                    if row.get(name) is not None}
            assert dict(points[key]) == want, (key, points[key], row)

    again = ing.run(*args, timeout=180)
    assert again.returncode == 0, again.stderr
    drain(ing)
    assert rows(scene.influx, "stats") == points


# ---- property-based: generated history and statistics rows through the real pipeline ----------

def fuzz_count() -> int:
    """A quarter of the suites' count per boundary: each example is a state HA records, or a
    statistics row it stores (`make fuzz` raises FUZZ_EXAMPLES)."""
    return max(40, fuzz_examples() // 4)


def dead_by(ing: IngestorHarness, key) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for letter in queue.list_dead(ing.queue_dir, "import"):
        found.setdefault(key(letter.event), []).append(letter.reason)
    return found


@pytest.mark.fuzz
def test_any_recorded_state_imports_as_documented_or_is_a_dead_letter(scene, tmp_path):
    """Hypothesis draws states and attributes (as tests/test_fuzz_ha.py does); the real HA
    records them (REST), `import history` reads them back from its recorder, the writer writes
    them; each lands as docs/schema.md says for the state HA recorded, or is a dead letter."""
    at_seed = fuzz_seed()
    examples = draw(st.tuples(states(), attributes()), fuzz_count(), at_seed)
    run = secrets.token_hex(3).replace("0", "a")
    entity_ids = [f"sensor.fzi{run}_{i}" for i in range(len(examples))]
    since = datetime.now(timezone.utc)
    posted = [(e, s, a) for e, (s, a) in zip(entity_ids, examples)]
    statuses = rest_states(scene.ha, "POST", posted)
    time.sleep(2.5)                                  # the recorder commits every second
    until = datetime.now(timezone.utc)
    try:
        ing = scene.ingestor("fuzz-history", "fuzz_history", {}, window="1h",
                             entities_per_request=500)
        result = ing.run("import", "history", "--since", since.isoformat(), "--until",
                         until.isoformat(), "--entity", f"sensor.fzi{run}_*", timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        drain(ing, dead_letters_expected=True)
        recorded = recorded_rows(scene, [e for e, code in zip(entity_ids, statuses)
                                         if code < 400], since, until)
    finally:
        rest_states(scene.ha, "DELETE", posted)

    judge = Judge("import_history", tmp_path, at_seed)
    expected = []
    for i, entity_id in enumerate(entity_ids):
        rows_ = recorded.get(entity_id, [])
        if statuses[i] >= 400:
            judge.count("refused by HA's REST API")
            expected.append(None)
        elif len(rows_) != 1:
            judge.failures.append({"index": i, "problem": f"HA recorded {len(rows_)} rows",
                                   "example": repr(examples[i])})
            expected.append(None)
        else:
            state = {"entity_id": entity_id, "state": rows_[0]["s"],
                     "attributes": rows_[0].get("a") or {}}
            expected.append(state_changed_point({"data": {"entity_id": entity_id,
                                                          "new_state": state}}))
    by_object: dict[str, list] = {}
    for (measurement, tags, _time), fields in read_points(scene.influx, "fuzz_history").items():
        by_object.setdefault(dict(tags).get("entity_id"), []).append(
            (measurement, dict(tags), fields))
    dead = dead_by(ing, lambda event: event["event"]["data"]["entity_id"])
    for i, entity_id in enumerate(entity_ids):
        if expected[i] is not None:
            judge.check(i, examples[i], expected[i], by_object.get(entity_id.split(".")[1], []),
                        dead.get(entity_id, []), lambda i=i: field_type_conflict(expected, i))
    judge.finish(len(examples))
    assert judge.counts.get("landed as documented", 0) > len(examples) // 5


def recorded_rows(scene: Scene, entity_ids: list[str], since, until) -> dict[str, list[dict]]:
    with scene.ha.client() as client:
        return client.command({"type": "history/history_during_period",
                               "start_time": since.isoformat(), "end_time": until.isoformat(),
                               "entity_ids": entity_ids, "include_start_time_state": False,
                               "significant_changes_only": False, "no_attributes": False,
                               "minimal_response": False}, timeout=120) or {}


UNITS = st.one_of(st.none(), st.sampled_from(("°C", "kWh", "#/min", "kW h", "a\\", "", "%",
                                              'a "b"', "x,y=z")), TEXT)
VALUE = st.floats(allow_nan=False, allow_infinity=False)


def statistic_example() -> st.SearchStrategy:
    mean = st.fixed_dictionaries({"mean": VALUE, "min": VALUE, "max": VALUE})
    total = st.fixed_dictionaries({"state": VALUE, "sum": VALUE})
    return st.tuples(UNITS, st.one_of(mean, total))


def statistics_point(statistic_id: str, source: str, unit, row: dict) -> Point | Dead:
    """docs/import.md, "Statistics in InfluxDB", for one row HA returned."""
    measurement = unit if unit else statistic_id
    if re.search(r'\\[, ="]', measurement):
        return Dead(["no query finds it"])
    stored = ha_stored(measurement + ("_" if measurement.endswith("\\") else ""))
    if measurement[:1] in ("#", "\t", "\x00"):
        stored = "\\" + stored
    domain, _, object_id = statistic_id.partition(":")
    fields = {name: float(row[name]) for name in ("mean", "min", "max", "sum", "state")
              if row.get(name) is not None}
    return Point(stored, {"statistic_id": statistic_id, "domain": domain,
                          "entity_id": object_id, "period": "hour", "source": source}, fields)


@pytest.mark.fuzz
def test_any_statistics_row_imports_as_documented_or_is_a_dead_letter(scene, tmp_path):
    """Hypothesis draws units and values of external statistics; the real HA stores them
    (recorder/import_statistics), `import statistics` reads them back, the writer writes them;
    each row lands as docs/import.md says, or is a dead letter with a reason."""
    at_seed = fuzz_seed()
    examples = draw(statistic_example(), fuzz_count(), at_seed)
    source = f"fzs{secrets.token_hex(3).replace('0', 'a')}"
    hour = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - \
        timedelta(days=3)
    ids = [f"{source}:n{i}" for i in range(len(examples))]
    with scene.ha.client() as client:
        for statistic_id, (unit, values) in zip(ids, examples):
            client.command({"type": "recorder/import_statistics",
                            "metadata": {"has_mean": "mean" in values, "has_sum": "sum" in values,
                                         "name": None, "source": source,
                                         "statistic_id": statistic_id,
                                         "unit_of_measurement": unit},
                            "stats": [{"start": hour.isoformat(), **values}]})
        query = {"type": "recorder/statistics_during_period", "start_time": hour.isoformat(),
                 "statistic_ids": ids, "period": "hour"}
        wait_until(lambda: len(client.command(query, timeout=60) or {}) == len(ids), 120,
                   "statistics stored")
        stored = client.command(query, timeout=60)
    ing = scene.ingestor("fuzz-stats", "fuzz_stats", statistic_ids_per_request=200)
    result = ing.run("import", "statistics", "--since", hour.isoformat(), "--statistic-id",
                     f"{source}:*", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    drain(ing, dead_letters_expected=True)

    judge = Judge("import_statistics", tmp_path, at_seed)
    by_id: dict[str, list] = {}
    for (measurement, tags, _time), fields in read_points(scene.influx, "fuzz_stats").items():
        by_id.setdefault(dict(tags).get("statistic_id"), []).append(
            (measurement, dict(tags), fields))
    dead = dead_by(ing, lambda event: event["statistic"]["statistic_id"])
    for i, statistic_id in enumerate(ids):
        rows_ = stored.get(statistic_id, [])
        assert len(rows_) == 1, (statistic_id, rows_)
        expected = statistics_point(statistic_id, source, examples[i][0], rows_[0])
        judge.check(i, examples[i], expected, by_id.get(ha_stored(statistic_id), []),
                    dead.get(statistic_id, []))
    judge.finish(len(examples))
    assert judge.counts.get("landed as documented", 0) > len(examples) // 5
