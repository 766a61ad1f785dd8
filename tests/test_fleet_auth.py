"""A site's credentials for NATS, every way NATS users configure them (user and password, token,
NKey, creds file with JWTs, TLS with a private CA), against a real nats-server configured for it;
and a site whose credentials are wrong: a clear error naming the cause, the documented exit code,
nothing dropped."""

from __future__ import annotations

import json
import time

import pytest

from tests.support import fleet, nats_auth
from tests.support.fixtures_influx import make_tls_files, mixed_events
from tests.support.fixtures_nats import NatsServer
from tests.support.procs import stop_process, tail, wait_until

pytestmark = pytest.mark.slow

START_NS = 1_700_000_000_000_000_000
SECRET = "s3cret-Pa55"


def server_and_credentials(method: str, root):
    """(a running server that demands ``method``, good nats: overrides, wrong overrides)."""
    if method == "password":
        auth = f'authorization {{ users = [ {{user: site1, password: "{SECRET}"}} ] }}'
        good, wrong = {"user": "site1", "password": SECRET}, {"user": "site1",
                                                               "password": "wrong-" + SECRET}
    elif method == "token":
        auth = f'authorization {{ token: "{SECRET}" }}'
        good, wrong = {"token": SECRET}, {"token": "wrong-" + SECRET}
    elif method == "nkey":
        seed, public = nats_auth.nkey_user(root)
        other = root / "other"
        other.mkdir()
        other_seed, _ = nats_auth.nkey_user(other)
        auth = f"authorization {{ users = [ {{nkey: {public}}} ] }}"
        good, wrong = {"nkey_seed_file": str(seed)}, {"nkey_seed_file": str(other_seed)}
    elif method == "creds":
        auth, creds, rogue = nats_auth.operator_setup(root / "jwt")
        good, wrong = {"creds_file": str(creds)}, {"creds_file": str(rogue)}
    else:
        raise ValueError(method)
    server = NatsServer(root / "nats", auth=auth).start()
    return server, {"servers": [server.url], **good}, {"servers": [server.url], **wrong}


@pytest.mark.parametrize("method", ["password", "token", "nkey", "creds"])
def test_each_way_to_authenticate_works_and_a_wrong_one_is_named(ingestor, tmp_path, method):
    server, good, wrong = server_and_credentials(method, tmp_path)
    try:
        ok = ingestor({"nats": good}, name="good")
        result = ok.run("nats", "init")
        assert result.returncode == 0, result.stderr
        assert "created stream HA_INGESTOR" in result.stdout
        bad = ingestor({"nats": wrong}, name="bad")
        refused = bad.run("nats", "status")
        assert refused.returncode == 3, refused.stderr
        assert "refused the credentials" in refused.stderr
        assert "Authorization Violation" in refused.stderr
        assert SECRET not in refused.stderr + refused.stdout
    finally:
        server.stop()


def test_tls_with_a_private_ca(ingestor, tmp_path):
    ca, cert, key = make_tls_files(tmp_path / "tls")
    server = NatsServer(tmp_path / "nats", tls=f'tls {{ cert_file: "{cert}", '
                                               f'key_file: "{key}" }}').start()
    try:
        ok = ingestor({"nats": {"servers": [server.url], "tls": {"ca_file": ca}}}, name="ok")
        result = ok.run("nats", "init")
        assert result.returncode == 0, result.stderr
        unverified = ingestor({"nats": {"servers": [server.url]}}, name="unverified")
        refused = unverified.run("nats", "status")
        assert refused.returncode == 3, refused.stderr
        assert "TLS with NATS at tls://127.0.0.1" in refused.stderr
        assert "certificate verify failed" in refused.stderr
    finally:
        server.stop()


def test_a_site_with_wrong_credentials_keeps_everything_and_says_why(ingestor, tmp_path,
                                                                     influxdb):
    """The writer does not give up (it retries slowly and loudly), drops nothing, stops cleanly
    with exit code 0, and once the password is fixed every event arrives."""
    server, good, wrong = server_and_credentials("password", tmp_path)
    try:
        influxdb.create_database(fleet.DB)
        central = ingestor(fleet.central_overrides(good["servers"], influxdb.url,
                                                   user="site1", password=SECRET),
                           name="central")
        assert central.run("nats", "init").returncode == 0
        site = ingestor(fleet.site_overrides(wrong["servers"], "west", user="site1",
                                             password=wrong["password"]), name="west")
        fleet.fill(site.queue_dir, mixed_events(500, START_NS))
        writer = site.start("write", log="writer")
        log = site.log_path("writer")
        wait_until(lambda: "refused the credentials" in log.read_text(), 60, "the auth error")
        time.sleep(2)
        assert writer.poll() is None, "the writer must not exit on refused credentials"
        text = log.read_text()
        assert ("NATS at nats://127.0.0.1:%d refused the credentials (user and password): "
                "nats: 'Authorization Violation'" % server.port) in text
        assert "nothing is dropped" in text
        assert SECRET not in text
        assert fleet.pending(site.queue_dir) == (500, 0)
        metrics = site.config["metrics"]["ports"]["writer"]
        assert _ready(metrics) == 503
        assert stop_process(writer) == 0, tail(log)
        assert fleet.pending(site.queue_dir) == (500, 0)
        site.write_config({"nats": {"password": SECRET}})
        site.start("write", log="writer2")
        central.start("write", "--from-nats", log="central")
        wait_until(lambda: fleet.tag_values(influxdb, "site").get("west") == 500, 120,
                   "every event of the site in InfluxDB")
        assert fleet.pending(site.queue_dir) == (0, 0)
    finally:
        server.stop()


def _ready(port: int) -> int:
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_status_json_reports_the_stream(ingestor, nats_server):
    ing = ingestor({"nats": {"servers": [nats_server.url]}})
    assert ing.run("nats", "init").returncode == 0
    status = json.loads(ing.run("nats", "status", "--json").stdout)
    assert status["stream"]["messages"] == 0 and status["consumer"]["pending"] == 0
    assert status["dead_letters"] == 0
