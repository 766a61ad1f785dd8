"""Property at the fleet's boundary: whatever events a site queues (generated Home Assistant state
changes and events, MQTT messages; names with spaces, commas, equals signs, quotes, backslashes
and any Unicode), the points a central writer reads from JetStream into InfluxDB are exactly the
points the direct writer writes for the same events, with the site tag added; what one path
dead-letters, the other does too.

Real servers and processes throughout: nats-server, InfluxDB 1.6.7, a direct ``ha-ingestor
write``, a site's ``write`` with ``nats.publish`` and a central ``write --from-nats``.
"""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ha_ingestor.envelope import ha_event, mqtt_event
from tests.support import fleet
from tests.support.fixtures_influx import InfluxServer, ha_state_event
from tests.support.fixtures_ingestor import IngestorHarness
from tests.support.fixtures_nats import NatsServer
from tests.support.procs import stop_process, wait_until

pytestmark = pytest.mark.slow

SITE = "prop, site=1"                 # a site name that needs escaping in a tag
START_NS = 1_750_000_000_000_000_000

names = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF,
                              blacklist_categories=("Cs",)), min_size=1, max_size=12)
scalars = st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=32),
                    st.integers(-10**6, 10**6), names, st.booleans(), st.none())
attributes = st.dictionaries(st.from_regex(r"[a-z][a-z_ ,=]{0,8}", fullmatch=True),
                             st.one_of(scalars, st.lists(scalars, max_size=3)), max_size=4)
states = st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=32).map(str), names)


@st.composite
def ha_state(draw, n: int, i: int, time_ns: int) -> dict:
    attrs = draw(attributes)
    if draw(st.booleans()):
        attrs["unit_of_measurement"] = draw(names)
    return ha_state_event(f"sensor.p{n}_{i}", draw(states), attrs, time_ns)


@st.composite
def ha_other(draw, n: int, i: int, time_ns: int) -> dict:
    stamp = ha_state_event("x.y", "1", {}, time_ns)["event"]["time_fired"]
    data = draw(st.dictionaries(st.from_regex(r"[a-z][a-z_]{0,8}", fullmatch=True), scalars,
                                max_size=4))
    return ha_event({"event_type": draw(st.sampled_from(["call_service", "automation_triggered",
                                                         "custom event, x=1"])),
                     "data": {**data, "entity_id": f"light.p{n}_{i}"}, "origin": "LOCAL",
                     "time_fired": stamp, "context": {"id": f"c{n}.{i}"}},
                    received_ns=time_ns)


@st.composite
def mqtt(draw, n: int, i: int, time_ns: int) -> dict:
    segments = draw(st.lists(names.filter(lambda s: not set(s) & set("+#/")), min_size=1,
                             max_size=3))
    payload = draw(st.one_of(
        st.dictionaries(names, scalars, max_size=4).map(lambda d: json.dumps(d).encode()),
        st.floats(allow_nan=False, allow_infinity=False).map(lambda f: str(f).encode()),
        names.map(str.encode), st.binary(max_size=20)))
    return mqtt_event(f"p{n}/" + "/".join(segments), payload, 1, draw(st.booleans()), time_ns)


@st.composite
def scenarios(draw) -> tuple[int, list[dict]]:
    n = next(EXAMPLE)
    kinds = draw(st.lists(st.sampled_from([ha_state, ha_other, mqtt]), min_size=1, max_size=12))
    base = START_NS + n * 10**12
    return n, [draw(kind(n, i, base + i * 1_000_000)) for i, kind in enumerate(kinds)]


EXAMPLE = itertools.count()


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet-property")
    nats_server = NatsServer(root / "nats").start()
    influx = InfluxServer(root / "influxdb").start()
    harnesses = []
    try:
        for db in ("direct", fleet.DB):
            influx.create_database(db)
        schema = {"mqtt": {"presets": ["zigbee2mqtt"]}}
        direct = IngestorHarness(root / "direct", {
            "influxdb": {"url": influx.url, "database": "direct", "flush_interval": "100ms"},
            "schema": schema})
        site = IngestorHarness(root / "site", fleet.site_overrides([nats_server.url], SITE))
        central = IngestorHarness(root / "central", fleet.central_overrides(
            [nats_server.url], influx.url))
        harnesses = [direct, site, central]
        for harness in harnesses:
            harness.workdir.mkdir(parents=True)
            harness.write_config()
        assert central.run("nats", "init").returncode == 0
        direct.start("write", log="writer")
        site.start("write", log="writer")
        central.start("write", "--from-nats", log="central")
        yield {"direct": direct, "site": site, "influx": influx, "servers": [nats_server.url]}
        for harness in harnesses:
            for proc in harness.procs:
                assert stop_process(proc) == 0
    finally:
        for harness in harnesses:
            harness.stop_all()
        nats_server.stop()
        influx.stop()


def settled(paths) -> bool:
    if fleet.queued(paths["direct"].queue_dir) or fleet.queued(paths["site"].queue_dir):
        return False
    state = fleet.jetstream_state(paths["servers"])
    return state["pending"] == 0 and state["ack_pending"] == 0


@settings(max_examples=8, deadline=None, database=None, print_blob=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(scenario=scenarios())
def test_property_fleet_points_equal_the_direct_writers(paths, scenario):
    _n, events = scenario
    for harness in (paths["direct"], paths["site"]):
        fleet.fill(harness.queue_dir, events, per_item=5)
    wait_until(lambda: settled(paths), 60, "both paths written", interval=0.2)
    influx = paths["influx"]
    direct = fleet.points(influx, "direct")
    ours = fleet.points(influx, fleet.DB, site=SITE)
    assert ours == direct
    assert len(direct) + fleet.pending(paths["direct"].queue_dir)[1] >= 1   # not vacuous
    assert sum(fleet.tag_values(influx, "site").values()) == len(direct)
    direct_dead = fleet.pending(paths["direct"].queue_dir)[1]
    site_dead = fleet.pending(paths["site"].queue_dir)[1]
    central_dead = fleet.jetstream_state(paths["servers"])["dead"]
    assert site_dead + central_dead == direct_dead
