"""A fleet through a real NATS JetStream (Debian's nats-server) into a real InfluxDB 1.6.7.

Sites' queues are filled the way the collectors fill them; ``ha-ingestor write`` (with
``nats.publish``), ``write --from-nats`` and ``nats init`` run as their own processes, the way an
administrator runs them.
"""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.js.api import DiscardPolicy, StreamConfig

from tests.support import fleet
from tests.support.fixtures_influx import mixed_events
from tests.support.procs import stop_process, tail, wait_until

pytestmark = pytest.mark.slow

START_NS = 1_700_000_000_000_000_000


def js_call(servers, function):
    async def run():
        nc = await nats.connect(servers=servers, allow_reconnect=False)
        try:
            return await function(nc.jetstream())
        finally:
            await nc.close()
    return asyncio.run(run())


# ---- stream set-up ------------------------------------------------------------------------

def test_nats_init_creates_the_streams_then_finds_them(ingestor, nats_server):
    ing = ingestor({"nats": {"servers": [nats_server.url], "duplicate_window": "5m"}})
    first = ing.run("nats", "init")
    assert first.returncode == 0, first.stderr
    assert "created stream HA_INGESTOR (ha_ingestor.points.>)" in first.stdout
    assert "duplicate window 300s" in first.stdout
    assert "created stream HA_INGESTOR_DEAD (ha_ingestor.dead.>)" in first.stdout
    assert "created durable consumer central on HA_INGESTOR" in first.stdout
    again = ing.run("nats", "init")
    assert again.returncode == 0, again.stderr
    assert "created" not in again.stdout and "found stream HA_INGESTOR " in again.stdout
    status = ing.run("nats", "status", "--json")
    assert '"messages": 0' in status.stdout and '"pending": 0' in status.stdout


def test_nats_init_keeps_an_operators_stream_and_reports_how_it_differs(ingestor, nats_server):
    js_call([nats_server.url], lambda js: js.add_stream(StreamConfig(
        name="OPS", subjects=["ha_ingestor.points.>"], discard=DiscardPolicy.OLD,
        max_age=3600, duplicate_window=60)))
    ing = ingestor({"nats": {"servers": [nats_server.url], "stream": "OPS"}})
    result = ing.run("nats", "init")
    assert result.returncode == 0, result.stderr
    assert "found stream OPS" in result.stdout
    assert "OPS: max_age is 3600s (config: 0s)" in result.stdout
    assert "discard is old: when the stream is full JetStream deletes the oldest" in result.stdout
    assert "left as they are" in result.stdout
    info = js_call([nats_server.url], lambda js: js.stream_info("OPS"))
    assert info.config.max_age == 3600 and info.config.discard == DiscardPolicy.OLD
    updated = ing.run("nats", "init", "--update")
    assert updated.returncode == 0 and "updated stream OPS" in updated.stdout, updated.stdout
    info = js_call([nats_server.url], lambda js: js.stream_info("OPS"))
    assert not info.config.max_age and info.config.discard == DiscardPolicy.NEW


def test_nats_init_refuses_a_stream_that_does_not_capture_the_points(ingestor, nats_server):
    js_call([nats_server.url], lambda js: js.add_stream(StreamConfig(
        name="OTHER", subjects=["ha_ingestor.points.>"])))
    ing = ingestor({"nats": {"servers": [nats_server.url], "stream": "MINE"}})
    result = ing.run("nats", "init")
    assert result.returncode == 2
    assert "captured by stream 'OTHER', not by 'MINE'" in result.stderr


def test_nats_init_names_an_unreachable_server(ingestor):
    ing = ingestor({"nats": {"servers": ["nats://127.0.0.1:1"], "connect_timeout": "1s"}})
    result = ing.run("nats", "init")
    assert result.returncode == 1
    assert "NATS at nats://127.0.0.1:1: no server could be reached" in result.stderr


# ---- sites → JetStream → central writers → InfluxDB -----------------------------------------

def test_two_sites_through_two_central_writers_match_the_direct_path(ingestor, nats_server,
                                                                     influxdb):
    """Every point arrives once, with its site tag, equal to what the direct writer writes."""
    servers = [nats_server.url]
    influxdb.create_database("direct")
    influxdb.create_database(fleet.DB)
    events = mixed_events(3000, START_NS)
    direct = ingestor({"influxdb": {"url": influxdb.url, "database": "direct",
                                    "flush_interval": "100ms"},
                       "schema": {"mqtt": {"presets": ["zigbee2mqtt"]}}}, name="direct")
    fleet.fill(direct.queue_dir, events)
    direct.start("write", log="writer")
    sites = []
    for name in ("north", "south"):
        site = ingestor(fleet.site_overrides(servers, name), name=name)
        fleet.fill(site.queue_dir, events)
        sites.append(site)
    central = ingestor(fleet.central_overrides(servers, influxdb.url), name="central")
    assert central.run("nats", "init").returncode == 0
    for site in sites:
        site.start("write", log="writer")
    for i in range(2):
        central.start("write", "--from-nats", log=f"central{i}",
                      env={"HA_INGESTOR_METRICS__PORTS__CENTRAL": "0"})
    wait_until(lambda: fleet.queued(direct.queue_dir) == 0 and
               len(fleet.points(influxdb, "direct")) == 3000, 120, "direct writer drained")
    expected = fleet.points(influxdb, "direct")
    wait_until(lambda: sum(fleet.tag_values(influxdb, "site").values()) >= 6000, 120,
               "both sites written")
    assert fleet.tag_values(influxdb, "site") == {"north": 3000, "south": 3000}
    for name in ("north", "south"):
        assert fleet.points(influxdb, fleet.DB, site=name) == expected
    state = fleet.jetstream_state(servers)
    assert state["pending"] == 0 and state["ack_pending"] == 0 and state["dead"] == 0
    for site in sites:
        assert fleet.queued(site.queue_dir) == 0
        for proc in site.procs:
            assert stop_process(proc) == 0, tail(site.log_path("writer"))
    for proc in central.procs:
        assert stop_process(proc) == 0
    logs = central.log_path("central0").read_text() + central.log_path("central1").read_text()
    assert "wrote" in logs or "JetStream: found" in logs
