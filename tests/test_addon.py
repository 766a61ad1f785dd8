"""The Home Assistant add-on (deploy/homeassistant-addon/): its files pass the Supervisor's rules,
and its entrypoint, given an options.json, a SUPERVISOR_TOKEN and a Supervisor, runs the pipeline.

The real Supervisor cannot run here (it manages Docker, the host and HA Core itself), so:
- config.yaml, the translations and repository.yaml are checked against the Supervisor's own rules
  as restated in tests/support/supervisor_rules.py (source and commit named there);
- the entrypoint runs against tests/support/supervisor_standin.py, which serves /services/mqtt and
  proxies /core/websocket to a real Home Assistant 2024.3.3 the way the Supervisor does. The broker
  (Mosquitto, with the user the service hands out) and InfluxDB 1.6.7 are real.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path, PurePosixPath

import pytest
import voluptuous as vol
import yaml

from ha_ingestor.config import load_config
from ha_ingestor.config.model import METRICS_PORTS, RUN_KEYS
from ha_ingestor.config.values import as_duration
from tests.support import supervisor_rules as rules
from tests.support.pipeline_check import DB, expect_events_land
from tests.support.procs import free_port, start_process, stop_process, tail, wait_until
from tests.support.supervisor_standin import SupervisorStandIn

ROOT = Path(__file__).resolve().parents[1]
REPO = ROOT / "deploy" / "homeassistant-addon"
ADDON = REPO / "ha-ingestor"
ENTRYPOINT = ADDON / "entrypoint.py"
ADDON_TOKEN = "0123456789abcdef0123456789abcdef"       # the Supervisor's token format
MQTT_USER, MQTT_PASSWORD = "addons", "Ahmohx9eiQu4ieGh"   # what the Mosquitto add-on hands out


def addon_config() -> dict:
    return yaml.safe_load((ADDON / "config.yaml").read_text())


def load_entrypoint():
    spec = importlib.util.spec_from_file_location("addon_entrypoint", ENTRYPOINT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def default_options(**changes) -> dict:
    """The options the Supervisor writes for a fresh install, with ``changes`` (dotted keys)."""
    options = json.loads(json.dumps(addon_config()["options"]))
    for dotted, value in changes.items():
        node = options
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    config = addon_config()
    return rules.app_options(config["schema"], options, config["name"])


# ---- the add-on's files against the Supervisor's rules -------------------------------------------

def test_config_yaml_passes_the_supervisors_rules_and_nothing_is_dropped():
    config = addon_config()
    validated = rules.validate_app_config(config)
    assert rules.dropped_keys(config, validated) == set()
    assert rules.advisories(config) == []     # run on the raw file, before defaults, as there
    rules.app_options(validated["schema"], validated["options"], validated["name"])
    assert validated["homeassistant_api"] is True
    assert set(validated["arch"]) == {"amd64", "aarch64"}
    assert {s.split(":")[0] for s in validated["services"]} == {"mqtt"}
    assert re.search(r"\[PORT:(\d+)\]/healthz$", validated["watchdog"]).group(1) == \
        str(METRICS_PORTS["run"])
    shutdown = next(k for k in RUN_KEYS if k.name == "shutdown_timeout").default
    assert validated["timeout"] > as_duration("run.shutdown_timeout", shutdown)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert validated["version"] == project["version"]
    assert f"## {project['version']}" in (ADDON / "CHANGELOG.md").read_text()


def test_the_supervisors_rules_reject_what_the_supervisor_rejects():
    """The restated rules can fail: each mistake below is one the Supervisor reports or drops."""
    config = addon_config()
    misspelt = {**config, "homeassistant_apii": True}
    assert rules.dropped_keys(misspelt, rules.validate_app_config(misspelt)) == \
        {"homeassistant_apii"}
    for bad in ({"services": ["mqtt:needs"]}, {"arch": ["x86"]}, {"timeout": 5},
                {"watchdog": "http://localhost:9100/healthz"}, {"schema": {"a": "string"}}):
        with pytest.raises(vol.Invalid):
            rules.validate_app_config({**config, **bad})
    with pytest.raises(vol.Invalid, match="Missing option 'queue'"):
        rules.app_options(config["schema"], {k: v for k, v in config["options"].items()
                                             if k != "queue"})
    with pytest.raises(vol.Invalid):
        rules.app_options(config["schema"], {**config["options"], "log_level": "verbose"})


def test_translations_and_repository_pass_and_name_every_option():
    config = addon_config()
    translations = yaml.safe_load((ADDON / "translations" / "en.yaml").read_text())
    checked = rules.SCHEMA_APP_TRANSLATIONS(translations)
    assert checked == translations, "keys the Supervisor would drop"
    names = checked["configuration"]
    assert set(names) == set(config["schema"])
    for key, typ in config["schema"].items():
        if isinstance(typ, dict):
            assert set(names[key]["fields"]) == set(typ), key
    assert set(checked["network"]) == set(config["ports"])
    repository = yaml.safe_load((REPO / "repository.yaml").read_text())
    assert rules.SCHEMA_REPOSITORY_CONFIG(repository) == repository
    assert not list(ADDON.glob("build.*")), "build.yaml is deprecated: the Dockerfile has it all"
    for name in ("DOCS.md", "README.md", "CHANGELOG.md", "Dockerfile", "entrypoint.py"):
        assert (ADDON / name).is_file(), name


def test_hot_backups_leave_out_the_live_queue_files_only():
    exclude = addon_config()["backup_exclude"]
    data = PurePosixPath("/mnt/data/supervisor/addons/data/local_ha_ingestor")
    queue_dir = load_entrypoint().build_config(
        default_options(**{"mqtt.enabled": False}), None, "http://supervisor",
        Path("/data"))[0]["queue"]["dir"]
    queue = data / PurePosixPath(queue_dir).relative_to("/data")
    for name in ("mqtt.db", "mqtt.db-wal", "mqtt.db-shm", "ha.db", "ha.db-wal"):
        assert rules.excluded_from_backup(queue / name, exclude), name
    for kept in ("options.json", "ha-ingestor.yaml"):
        assert not rules.excluded_from_backup(data / kept, exclude), kept


# ---- the entrypoint ------------------------------------------------------------------------------

def run_entrypoint(tmp_path: Path, options: dict, standin_url: str, token: str = ADDON_TOKEN,
                   timeout: float = 60) -> tuple[subprocess.CompletedProcess, Path]:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "options.json").write_text(json.dumps(options))
    result = subprocess.run([sys.executable, str(ENTRYPOINT)], capture_output=True, text=True,
                            timeout=timeout, env=addon_env(data, standin_url, token), cwd=tmp_path)
    return result, data


def addon_env(data: Path, standin_url: str, token: str = ADDON_TOKEN) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HA_INGESTOR_", "ADDON_"))}
    env.update(SUPERVISOR_TOKEN=token, SUPERVISOR_URL=standin_url, ADDON_DATA=str(data),
               # loopback and free ports in tests; the add-on itself listens on 0.0.0.0:9100-9103
               HA_INGESTOR_METRICS__HOST="127.0.0.1")
    for name in METRICS_PORTS:
        env[f"HA_INGESTOR_METRICS__PORTS__{name.upper()}"] = str(free_port())
    return env


@pytest.fixture
def standin_factory():
    started = []

    def make(**kwargs) -> SupervisorStandIn:
        kwargs.setdefault("ha_url", "http://127.0.0.1:9")       # no Core: only /services used
        kwargs.setdefault("ha_token", "unused")
        kwargs.setdefault("addon_token", ADDON_TOKEN)
        standin = SupervisorStandIn(**kwargs).start()
        started.append(standin)
        return standin
    yield make
    for standin in started:
        standin.stop()


WRONG_OPTIONS = [
    ({"influxdb.url": "ftp://a0d7b954-influxdb:8086"}, "influxdb.url"),
    ({"queue.max_bytes": "plenty"}, "queue.max_bytes"),
    ({"influxdb.api": "v2", "influxdb.org": "home", "influxdb.bucket": "ha"}, "influxdb.token"),
    ({"include.entities": ["kitchen temperature"]}, "schema.state_changed.include.entities"),
]


@pytest.mark.parametrize("changes, key", WRONG_OPTIONS)
def test_a_wrong_option_exits_2_with_the_message_of_config_check(tmp_path, standin_factory,
                                                                 changes, key):
    standin = standin_factory(mqtt=None)
    options = default_options(**{"mqtt.enabled": False, "influxdb.password": "Influx-Secret-1",
                                 **changes})
    result, data = run_entrypoint(tmp_path, options, standin.url)
    assert result.returncode == 2, result.stdout + result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and key in error, result.stderr
    check = subprocess.run(
        [sys.executable, "-m", "ha_ingestor", "--config", str(data / "ha-ingestor.yaml"),
         "config", "check"], capture_output=True, text=True, timeout=60,
        env={**addon_env(data, standin.url), "ADDON_INFLUXDB_PASSWORD": "Influx-Secret-1"})
    assert check.returncode == 2
    assert check.stderr.strip() == error
    output = result.stdout + result.stderr + (data / "ha-ingestor.yaml").read_text()
    assert "Influx-Secret-1" not in output and ADDON_TOKEN not in output


def test_no_broker_and_no_mqtt_host_is_a_clear_exit_2(tmp_path, standin_factory):
    standin = standin_factory(mqtt=None)
    result, _ = run_entrypoint(tmp_path, default_options(), standin.url)
    assert result.returncode == 2
    assert "no add-on provides the Supervisor's MQTT service" in result.stderr
    assert "mqtt.host is not set" in result.stderr
    assert standin.seen.service_requests == [400]


def test_a_token_the_supervisor_refuses_is_a_clear_exit_2(tmp_path, standin_factory):
    standin = standin_factory(mqtt={"host": "127.0.0.1", "port": 1883})
    result, _ = run_entrypoint(tmp_path, default_options(), standin.url, token="f" * 32)
    assert result.returncode == 2
    assert "the Supervisor refused this add-on's token" in result.stderr
    assert "f" * 32 not in result.stderr


def test_an_unreachable_supervisor_is_exit_1_after_retrying():
    entrypoint = load_entrypoint()
    began = time.monotonic()
    with pytest.raises(entrypoint.AddonError) as raised:
        entrypoint.fetch_mqtt_service(f"http://127.0.0.1:{free_port()}", ADDON_TOKEN, wait_s=2)
    assert raised.value.exit_code == 1 and time.monotonic() - began >= 2
    assert "cannot ask the Supervisor for the MQTT service" in str(raised.value)


def test_the_mqtt_service_and_the_mqtt_host_option_become_the_broker():
    entrypoint = load_entrypoint()
    service = {"host": "core-mosquitto", "port": 1883, "ssl": False, "username": "addons",
               "password": MQTT_PASSWORD, "protocol": "3.1.1", "addon": "core_mosquitto"}
    config, env = entrypoint.build_config(default_options(), service, "http://supervisor",
                                          Path("/data"))
    assert config["mqtt"] | {"password": None} == {
        "enabled": True, "topics": ["#"], "exclude_topics": [], "host": "core-mosquitto",
        "port": 1883, "username": "addons", "password": None}
    assert env == {"ADDON_MQTT_PASSWORD": MQTT_PASSWORD}
    assert config["homeassistant"]["url"] == "ws://supervisor/core/websocket"
    manual = default_options(**{"mqtt.host": "broker.lan", "mqtt.port": 8883, "mqtt.ssl": True})
    config, env = entrypoint.build_config(manual, service, "http://supervisor", Path("/data"))
    assert (config["mqtt"]["host"], config["mqtt"]["port"], config["mqtt"]["tls"]) == \
        ("broker.lan", 8883, {"enabled": True})
    assert "username" not in config["mqtt"] and env == {}


# ---- the whole pipeline through the stand-in -----------------------------------------------------

@pytest.mark.realha
@pytest.mark.timeout(400)
def test_the_entrypoint_runs_the_pipeline_through_the_supervisor(tmp_path, real_ha,
                                                                 mosquitto_factory, influxdb):
    broker = mosquitto_factory(users={MQTT_USER: MQTT_PASSWORD})
    influxdb.create_database(DB)                     # as the InfluxDB add-on's users do
    # The port as a string, as the Supervisor's API documentation shows it.
    standin = SupervisorStandIn(ha_url=real_ha.url, ha_token=real_ha.token,
                                addon_token=ADDON_TOKEN,
                                mqtt={"host": "127.0.0.1", "port": str(broker.port),
                                      "username": MQTT_USER, "password": MQTT_PASSWORD}).start()
    data = tmp_path / "data"
    data.mkdir()
    options = default_options(**{"influxdb.url": influxdb.url, "influxdb.database": DB,
                                 "exclude.domains": ["automation"]})
    (data / "options.json").write_text(json.dumps(options))
    log = tmp_path / "addon.log"
    proc = start_process([sys.executable, str(ENTRYPOINT)], log,
                         env=addon_env(data, standin.url), cwd=tmp_path)
    try:
        # Both collectors ready: HA's through the stand-in, and the MQTT collector subscribed (a
        # message published before the subscription reaches no session).
        wait_until(lambda: standin.seen.ws_sessions >= 1 and (data / "queue" / "ha.db").exists()
                   and "subscribed to" in log.read_text() or proc.poll() is not None, 90,
                   "both collectors through the stand-in", interval=0.5)
        assert proc.poll() is None, tail(log)
        stored = expect_events_land(real_ha, broker.port, influxdb, lambda: tail(log, 80),
                                    "addon-test/", username=MQTT_USER, password=MQTT_PASSWORD,
                                    skip_domains=("automation",))
        assert not [p for p in stored if p[0] == "automation"], "exclude.domains ignored"
        assert stop_process(proc, timeout=60) == 0, tail(log, 80)
    finally:
        stop_process(proc, timeout=60)
        standin.stop()
    text = log.read_text()
    assert f"MQTT broker 127.0.0.1:{broker.port} (the Supervisor's MQTT service)" in text
    assert standin.seen.service_requests == [200]
    assert standin.seen.frames_to_core > 0 and standin.seen.ws_auth_invalid == 0
    written = (data / "ha-ingestor.yaml").read_text()
    for secret in (MQTT_PASSWORD, ADDON_TOKEN, real_ha.token):
        assert secret not in text and secret not in written
    queue_files = sorted((data / "queue").glob("*.db"))
    assert [p.name for p in queue_files] == ["ha.db", "mqtt.db"]
    for path in [data / "ha-ingestor.yaml", data / "queue", *queue_files]:
        assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"


# ---- property: whatever the Supervisor lets through, a config or a clear error -----------------

PLAUSIBLE = ["", "1GiB", "500MB", "home_assistant", "sensor", "light.kitchen", "sensor.*_power",
             "zigbee2mqtt/#", "state_changed", "ha-org", "secret-Pa55"]


def _value(typ: str):
    from hypothesis import strategies as st
    kind = typ.rstrip("?")
    if kind.startswith("list("):
        return st.sampled_from(kind[5:-1].split("|"))
    return {"bool": st.booleans(), "port": st.integers(1, 65535),
            "password": st.from_regex(r"\A[A-Za-z0-9!$%&]{8,16}\Z").map(lambda s: "pw" + s),
            "url": st.sampled_from(["http", "https", "ftp", "ws"]).flatmap(
                lambda scheme: st.from_regex(r"\A[a-z0-9.-]{1,20}(:[0-9]{1,5})?\Z").map(
                    lambda host: f"{scheme}://{host}")),
            }.get(kind, st.one_of(st.sampled_from(PLAUSIBLE), st.text(max_size=30)))


def _leaves(schema: dict, prefix: str = "") -> list[tuple[str, object]]:
    found = []
    for key, typ in schema.items():
        if isinstance(typ, dict):
            found += _leaves(typ, f"{prefix}{key}.")
        else:
            found.append((f"{prefix}{key}", typ))
    return found


def _changes(schema: dict):
    """Up to four options of the defaults replaced by values of their schema type."""
    from hypothesis import strategies as st

    def value(typ):
        return st.lists(_value(typ[0]), max_size=3) if isinstance(typ, list) else _value(typ)
    return st.lists(st.sampled_from(_leaves(schema)), max_size=4, unique_by=lambda x: x[0]) \
        .flatmap(lambda picked: st.fixed_dictionaries({key: value(typ) for key, typ in picked}))


def test_any_options_the_supervisor_accepts_give_a_config_or_a_clear_error(tmp_path):
    """Options generated from config.yaml's schema and accepted by the Supervisor's rules: the
    entrypoint's config either loads or fails with a ConfigError naming a key; no other
    exception, and no secret in the message."""
    from hypothesis import HealthCheck, given, settings

    from ha_ingestor.errors import ConfigError
    entrypoint = load_entrypoint()
    config = addon_config()
    service = {"host": "core-mosquitto", "port": 1883, "username": "addons",
               "password": MQTT_PASSWORD}
    outcomes = {"ok": 0, "error": 0}

    @settings(max_examples=100, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.filter_too_much, HealthCheck.too_slow])
    @given(_changes(config["schema"]))
    def check(changes):
        try:
            options = default_options(**changes)
        except vol.Invalid:
            return                               # the Supervisor refuses to start the add-on
        built, secrets = entrypoint.build_config(options, service, "http://supervisor",
                                                 tmp_path)
        path = tmp_path / "c.yaml"
        entrypoint.write_config(built, path)
        try:
            load_config(path, env={"SUPERVISOR_TOKEN": ADDON_TOKEN, **secrets})
            outcomes["ok"] += 1
        except ConfigError as exc:
            outcomes["error"] += 1
            message = str(exc)
            assert re.match(r"^(\S+ )?[a-z_]+(\.[a-z_\[\]0-9]+)*\b", message), message
            for secret in [ADDON_TOKEN, *secrets.values()]:
                assert secret not in message, message

    check()
    assert outcomes["ok"] > 0 and outcomes["error"] > 0, outcomes
