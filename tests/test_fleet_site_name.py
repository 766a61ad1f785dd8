"""A site named after its Home Assistant: without ``nats.site`` the site's writer waits for the HA
collector to record HA's name (``location_name``, "Test Home" in the test HA's configuration),
then tags every point with it. Meanwhile the writer already holds the queue files: a second
writer on the same queue exits 4 at once. A real Home Assistant, nats-server and InfluxDB 1.6.7.
"""

from __future__ import annotations

import pytest

from tests.support import fleet
from tests.support.fixtures_homeassistant import collector_overrides
from tests.support.procs import tail, wait_until

pytestmark = [pytest.mark.realha, pytest.mark.slow]

HA_NAME = "Test Home"            # homeassistant: name: in tests/support/real_ha.py


def test_a_site_is_named_after_home_assistant_and_its_writer_holds_the_queue(
        ingestor, nats_server, influxdb, real_ha):
    influxdb.create_database(fleet.DB)
    central = ingestor(fleet.central_overrides([nats_server.url], influxdb.url), name="central")
    assert central.run("nats", "init").returncode == 0
    overrides = fleet.site_overrides([nats_server.url], site="")
    overrides.update(collector_overrides(real_ha.ws_url, real_ha.token))
    del overrides["nats"]["site"]
    site = ingestor(overrides, name="site")

    writer = site.start("write", log="writer")
    log = site.log_path("writer")
    wait_until(lambda: "waiting for the HA collector to record Home Assistant's name"
               in log.read_text(), 60, "the site's writer waiting for HA's name")
    second = site.run("write", timeout=60)
    assert second.returncode == 4, second.stderr
    assert "already used by the writer" in second.stderr + second.stdout
    assert writer.poll() is None, tail(log)

    site.start("collect", "ha", log="ha")
    wait_until(lambda: "subject ha_ingestor.points.Test_Home" in log.read_text(), 90,
               "the site's writer publishing under HA's name")
    assert f"site name: {HA_NAME!r}" in log.read_text()
    central.start("write", "--from-nats", log="central")
    wait_until(lambda: fleet.tag_values(influxdb, "site").get(HA_NAME, 0) > 0, 120,
               "HA's states in InfluxDB under the site's name")
    assert set(fleet.tag_values(influxdb, "site")) == {HA_NAME}
