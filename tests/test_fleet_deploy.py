"""The fleet's deploy examples (deploy/fleet/) do what docs/fleet.md says: the site and central
configs load, the NATS node's permissions let a site publish only its own subject and the central
writers do their work, the leaf node example is a valid server config and a site publishing
through a leaf node reaches the cluster's stream, the central writers' systemd unit runs
``write --from-nats`` on the port its instance names."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from ha_ingestor.config import load_config
from tests.support import fleet
from tests.support.fixtures_influx import make_tls_files, mixed_events
from tests.support.fixtures_nats import NatsServer
from tests.support.procs import free_port, require_binary, wait_until

pytestmark = pytest.mark.slow

FLEET = Path(__file__).resolve().parents[1] / "deploy" / "fleet"
START_NS = 1_700_000_000_000_000_000


def localized(name: str, tmp_path: Path) -> Path:
    """The example with its secret and CA files pointing at files that exist."""
    text = (FLEET / name).read_text()
    for path in sorted(set(re.findall(r"(?:_file): (/\S+)", text))):
        local = tmp_path / Path(path).name
        local.write_text("secret\n")
        text = text.replace(path, str(local))
    out = tmp_path / name
    out.write_text(text)
    return out


def test_site_and_central_examples_load(tmp_path):
    site = load_config(localized("site.yaml", tmp_path), env={})
    assert site.nats.publish and site.nats.site == "home-042" and site.nats.tls.enabled
    assert site.nats.auth_method() == "creds file" and len(site.nats.servers) == 3
    central = load_config(localized("central.yaml", tmp_path), env={})
    assert not central.nats.publish and central.nats.replicas == 3
    assert central.influxdb.database == "fleet" and central.enabled_components() == ["writer"]


def test_central_writer_unit_runs_write_from_nats_on_its_instance_port():
    text = (FLEET / "ha-ingestor-central@.service").read_text()
    exec_line = re.search(r"^ExecStart=(.+)$", text, re.M).group(1)
    assert exec_line.endswith("write --from-nats")
    assert "Environment=HA_INGESTOR_METRICS__PORTS__CENTRAL=%i" in text
    assert re.search(r"^RestartPreventExitStatus=2 3$", text, re.M)


def test_node_example_is_a_valid_server_config(tmp_path, monkeypatch):
    _ca, cert, key = make_tls_files(tmp_path / "tls")
    text = (FLEET / "nats-node.conf").read_text()
    text = text.replace("/etc/nats/server.pem", cert).replace("/etc/nats/server.key", key)
    text = text.replace("/var/lib/nats", str(tmp_path / "store"))
    (tmp_path / "node.conf").write_text(text)
    monkeypatch.setenv("SITE_042_PASSWORD", "p1")
    monkeypatch.setenv("CENTRAL_PASSWORD", "p2")
    binary = require_binary("nats-server", "nats-server")
    for conf in (tmp_path / "node.conf", FLEET / "nats-leaf.conf"):
        result = subprocess.run([binary, "-c", str(conf), "-t"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def example_authorization() -> str:
    text = (FLEET / "nats-node.conf").read_text()
    return text[text.index("authorization {"):]


def test_example_permissions_let_a_site_publish_only_its_own_subject(ingestor, tmp_path,
                                                                     influxdb, monkeypatch):
    monkeypatch.setenv("SITE_042_PASSWORD", "site-pw")
    monkeypatch.setenv("CENTRAL_PASSWORD", "central-pw")
    server = NatsServer(tmp_path / "nats", auth=example_authorization()).start()
    try:
        influxdb.create_database(fleet.DB)
        servers = [server.url]
        central = ingestor(fleet.central_overrides(servers, influxdb.url, user="central",
                                                   password="central-pw"), name="central")
        init = central.run("nats", "init")
        assert init.returncode == 0, init.stderr
        central.start("write", "--from-nats", log="central")
        site = ingestor(fleet.site_overrides(servers, "home-042", user="home-042",
                                             password="site-pw"), name="site")
        fleet.fill(site.queue_dir, mixed_events(300, START_NS))
        site.start("write", log="writer")
        wait_until(lambda: fleet.tag_values(influxdb, "site").get("home-042") == 300, 60,
                   "the site's points in InfluxDB")
        other = ingestor(fleet.site_overrides(servers, "home-043", user="home-042",
                                              password="site-pw"), name="other")
        fleet.fill(other.queue_dir, mixed_events(10, START_NS))
        other.start("write", log="writer")
        log = other.log_path("writer")
        wait_until(lambda: "NATS denied this user a subject it needs" in log.read_text(), 60,
                   "the refusal")
        assert "permissions violation for publish to \"ha_ingestor.points.home-043\"" \
            in log.read_text()
        assert fleet.pending(other.queue_dir) == (10, 0)
    finally:
        server.stop()


def test_a_site_behind_a_leaf_node_reaches_the_stream(ingestor, tmp_path, influxdb):
    """The leaf node example's shape: the site's writer talks to a local NATS server without
    JetStream, which carries its messages (and JetStream's acks) to the hub."""
    leaf_port = free_port()
    hub = NatsServer(tmp_path / "hub", name="hub",
                     extra=f"leafnodes {{ listen: 127.0.0.1:{leaf_port} }}").start()
    leaf = NatsServer(tmp_path / "leaf", name="leaf", jetstream=False, extra=(
        f'leafnodes {{ remotes = [ {{urls: ["nats://127.0.0.1:{leaf_port}"]}} ] }}')).start()
    try:
        influxdb.create_database(fleet.DB)
        central = ingestor(fleet.central_overrides([hub.url], influxdb.url), name="central")
        assert central.run("nats", "init").returncode == 0
        central.start("write", "--from-nats", log="central")
        site = ingestor(fleet.site_overrides([leaf.url], "leafy"), name="site")
        fleet.fill(site.queue_dir, mixed_events(500, START_NS))
        wait_until(lambda: hub.monitor("/leafz").get("leafnodes"), 30, "the leaf connected")
        site.start("write", log="writer")
        wait_until(lambda: fleet.tag_values(influxdb, "site").get("leafy") == 500, 60,
                   "the site's points in InfluxDB")
    finally:
        leaf.stop()
        hub.stop()
