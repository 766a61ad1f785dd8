"""``config check --connect`` against a real Mosquitto (password file), a real Home Assistant
(every tested release) and InfluxDB 1.6.7 with authentication: each wrong credential is named
and exits 3, a missing database is named, a server that is not there exits 1, all good exits 0.
No secret appears in the output. The v2 API: VictoriaMetrics takes the empty write (exit 0);
InfluxDB 1.6.7, which has no v2 write API, answers 404 for the bucket (exit 3, named)."""

from __future__ import annotations

import pytest

from tests.support.procs import free_port

pytestmark = pytest.mark.realha

GOOD = {"mqtt": ("collector", "mqtt-pw-1"), "influx": ("writer", "influx-pw-1")}


@pytest.fixture
def servers(mosquitto_factory, influxdb_auth, real_ha):
    broker = mosquitto_factory(users={GOOD["mqtt"][0]: GOOD["mqtt"][1]})
    influxdb_auth.create_database("home_assistant")
    influxdb_auth._raw_query(f"CREATE USER {GOOD['influx'][0]} WITH PASSWORD "
                             f"'{GOOD['influx'][1]}'")
    influxdb_auth._raw_query(f"GRANT WRITE ON home_assistant TO {GOOD['influx'][0]}")
    influxdb_auth._raw_query("CREATE USER reader WITH PASSWORD 'reader-pw'")
    influxdb_auth._raw_query("GRANT READ ON home_assistant TO reader")
    return broker, influxdb_auth, real_ha


def settings(servers, **changes) -> dict:
    broker, influx, ha = servers
    config = {
        "mqtt": {"enabled": True, "host": "127.0.0.1", "port": broker.port,
                 "username": GOOD["mqtt"][0], "password": GOOD["mqtt"][1],
                 "topics": ["zigbee2mqtt/#", "tele/#"]},
        "homeassistant": {"enabled": True, "url": ha.ws_url, "token": ha.token},
        "influxdb": {"url": influx.url, "database": "home_assistant",
                     "username": GOOD["influx"][0], "password": GOOD["influx"][1]},
    }
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        config[section][key] = value
    return config


def check(ingestor, config):
    ing = ingestor(config)
    done = ing.run("config", "check", "--connect", timeout=120)
    lines = {line.split()[0]: line for line in done.stdout.splitlines()[1:] if line.strip()}
    return done, lines


def test_all_good_exits_0(ingestor, servers):
    done, lines = check(ingestor, settings(servers))
    assert done.returncode == 0, done.stdout + done.stderr
    assert set(lines) == {"mqtt", "homeassistant", "influxdb"}
    assert "accepted user 'collector' and the subscription to 2 topic filter(s)" in lines["mqtt"]
    assert "accepted the token and the subscription to all event types" in \
        lines["homeassistant"]
    assert "database 'home_assistant' exists and accepts user 'writer'" in lines["influxdb"]
    assert all(" OK " in line for line in lines.values())


@pytest.mark.parametrize("change, target, message", [
    ({"mqtt__password": "wrong-secret-1"}, "mqtt",
     "check mqtt.username, mqtt.password and mqtt.client_id"),
    ({"mqtt__username": "nobody"}, "mqtt", "MQTT authentication failed"),
    ({"homeassistant__token": "wrong-secret-2"}, "homeassistant", "rejected the access token"),
    ({"influxdb__password": "wrong-secret-3"}, "influxdb",
     "InfluxDB refused the credentials for database 'home_assistant' (401"),
    ({"influxdb__username": "reader", "influxdb__password": "reader-pw"}, "influxdb",
     "InfluxDB denied writing to database 'home_assistant' (403"),
    ({"influxdb__database": "not_created"}, "influxdb",
     "InfluxDB has no database 'not_created' (404: database not found"),
])
def test_each_refusal_is_named_and_exits_3(ingestor, servers, change, target, message):
    done, lines = check(ingestor, settings(servers, **change))
    assert done.returncode == 3, done.stdout + done.stderr
    assert "REFUSED" in lines[target] and message in lines[target], done.stdout
    others = set(lines) - {target}
    assert all(" OK " in lines[name] for name in others), done.stdout
    for value in change.values():
        if "secret" in str(value):
            assert value not in done.stdout + done.stderr


def test_a_server_that_is_not_there_exits_1(ingestor, servers):
    done, lines = check(ingestor, settings(servers, influxdb__url=f"http://127.0.0.1:"
                                                                  f"{free_port()}"))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED" in lines["influxdb"] and "cannot reach InfluxDB" in lines["influxdb"]


def test_only_what_is_enabled_is_checked(ingestor, servers):
    config = settings(servers)
    config["mqtt"] = {"enabled": False}
    config["homeassistant"] = {"enabled": False}
    done, lines = check(ingestor, config)
    assert done.returncode == 0 and set(lines) == {"influxdb"}, done.stdout


def v2_config(url: str) -> dict:
    return {"mqtt": {"enabled": False}, "homeassistant": {"enabled": False},
            "influxdb": {"api": "v2", "url": url, "org": "home", "bucket": "ha",
                         "token": "v2-secret-token"}}


def test_v2_all_good_exits_0(ingestor, victoriametrics):
    done, lines = check(ingestor, v2_config(victoriametrics.url))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK" in lines["influxdb"] and \
        "bucket 'ha' (org 'home') exists and accepts the token" in lines["influxdb"]
    assert "v2-secret-token" not in done.stdout + done.stderr


def test_v2_bucket_that_is_not_there_is_named_and_exits_3(ingestor, influxdb):
    done, lines = check(ingestor, v2_config(influxdb.url))
    assert done.returncode == 3, done.stdout + done.stderr
    assert "REFUSED" in lines["influxdb"], done.stdout
    assert "InfluxDB has no bucket 'ha' in org 'home' (404" in lines["influxdb"]
    assert "need influxdb.api: v1" in lines["influxdb"]
    assert "v2-secret-token" not in done.stdout + done.stderr
