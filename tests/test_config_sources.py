"""Where config values come from: ``!secret``/``!env_var`` (as Home Assistant resolves them),
``${X:-default}``, ``HA_INGESTOR_*`` overrides taken verbatim, and the edges a review found: TLS
settings beside a plain URL, credentials inside a URL, YAML alias bombs. Secrets never appear in
an error or in ``config show``; ``config show`` prints a config that ``config check -`` accepts."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ha_ingestor.config import load_config, load_queue_config
from ha_ingestor.envelope import ha_event
from ha_ingestor.errors import ConfigError
from ha_ingestor.queue import Producer

CLI = [sys.executable, "-m", "ha_ingestor"]


def cli(tmp_path, text: str, *args: str, env: dict | None = None, stdin: str | None = None,
        limit_memory: bool = False):
    path = tmp_path / "ha-ingestor.yaml"
    path.write_text(text)
    return subprocess.run(CLI + ["--config", str(path), *args], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", **(env or {})}, cwd=tmp_path,
                          timeout=60, input=stdin,
                          preexec_fn=_limit_memory if limit_memory else None)


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def load(tmp_path, text: str, env: dict | None = None, name: str = "c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return load_config(path, env=env or {})


# ---- !secret and !env_var ---------------------------------------------------------------------

def test_secret_and_env_var_tags_resolve_as_home_assistant_does(tmp_path):
    (tmp_path / "secrets.yaml").write_text("ha_token: 'tok #1'\nmqtt_pw: 0755\n"
                                           "logger: debug\n")
    config = load(tmp_path, "homeassistant: {token: !secret ha_token}\n"
                            "mqtt: {username: m, password: !secret mqtt_pw}\n"
                            "influxdb: {database: !env_var INFLUX_DB fallback db}\n"
                            "queue: {dir: !env_var QUEUE_DIR}\n",
                  env={"QUEUE_DIR": "/tmp/q"})
    assert config.homeassistant.token == "tok #1"
    assert config.mqtt.password == "493"              # YAML 1.1 reads 0755 as octal, as HA does
    assert config.influxdb.database == "fallback db"
    assert str(config.queue.dir) == "/tmp/q"


def test_a_secret_is_looked_up_in_parent_folders_up_to_the_config_folder(tmp_path):
    (tmp_path / "secrets.yaml").write_text("t: from-parent\n")
    config = load(tmp_path, "homeassistant: {token: !secret t}\n")
    assert config.homeassistant.token == "from-parent"


@pytest.mark.parametrize("text, message", [
    ("homeassistant: {token: !secret nope}\n",
     "homeassistant.token: secret 'nope' is not defined in"),
    ("homeassistant: {token: !env_var NOT_SET_HERE}\n",
     "homeassistant.token: !env_var NOT_SET_HERE is not set (and has no default)"),
    ("homeassistant: {token: !secret }\n", "!secret needs a name"),
])
def test_a_missing_secret_or_variable_is_named(tmp_path, text, message):
    (tmp_path / "secrets.yaml").write_text("other: never-shown-value\n")
    result = cli(tmp_path, text, "config", "check")
    assert result.returncode == 2
    assert message in result.stderr
    assert "never-shown-value" not in result.stderr


def test_queue_commands_need_only_the_queue_section(tmp_path):
    """An administrator's shell on a systemd host: the collectors' secrets are in the service's
    credentials folder (not there for this shell), variables only the unit sets, a secrets.yaml
    entry that is missing. `queue status` (table, --json, --watch) and `queue peek` read the
    queue all the same; only the components refuse the config."""
    credentials = "/run/credentials/ha-ingestor.service"
    text = ("queue: {dir: !env_var QDIR ./q}\n"
            f"homeassistant: {{token: '${{HA_TOKEN}}', token_file: {credentials}/ha_token}}\n"
            f"mqtt: {{username: u, password_file: {credentials}/mqtt_password}}\n"
            "influxdb: {token: !env_var UNSET_TOO, password: !secret missing}\n")
    assert load_queue_config(_write(tmp_path, text), env={}).dir.name == "q"
    producer = Producer(tmp_path / "q", "ha", max_bytes=2**30)
    producer.append([ha_event({"event_type": "call_service", "data": {"n": i}})
                     for i in range(3)])
    producer.close()
    result = cli(tmp_path, text, "queue", "status", "--json")
    assert result.returncode == 0, result.stderr
    queues = json.loads(result.stdout)["queues"]
    assert set(queues) == {"mqtt", "ha", "import"} and queues["ha"]["ready"] == 3
    for args in (["status"], ["status", "--watch", "0.2", "--count", "2"], ["peek"]):
        result = cli(tmp_path, text, "queue", *args)
        assert result.returncode == 0, (args, result.stderr)
        assert "ha" in result.stdout and "3" in result.stdout, (args, result.stdout)
    refused = cli(tmp_path, text, "config", "check")
    assert refused.returncode == 2
    assert "cannot read secret file" in refused.stderr or "not set" in refused.stderr
    with pytest.raises(ConfigError, match="cannot read secret file"):
        load(tmp_path, text, env={"HA_TOKEN": "t"})


def _write(tmp_path, text):
    path = tmp_path / "q.yaml"
    path.write_text(text)
    return path


# ---- ${X:-default} and verbatim overrides -----------------------------------------------------

@pytest.mark.parametrize("env, expected", [({}, "dflt"), ({"DB": ""}, "dflt"),
                                           ({"DB": "mine"}, "mine")])
def test_default_is_used_when_the_variable_is_unset_or_empty(tmp_path, env, expected):
    config = load(tmp_path, "homeassistant: {token: t}\ninfluxdb: {database: '${DB:-dflt}'}\n",
                  env=env)
    assert config.influxdb.database == expected


def test_an_empty_variable_without_default_is_empty(tmp_path):
    config = load(tmp_path, "homeassistant: {token: t}\nmqtt: {username: 'x${EMPTY}'}\n",
                  env={"EMPTY": ""})
    assert config.mqtt.username == "x"


TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
               min_size=1, max_size=40)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(secret=TEXT, name=TEXT.filter(lambda s: s.strip()))
def test_any_string_given_by_the_environment_is_kept_verbatim(tmp_path, secret, name):
    env = {"HA_INGESTOR_MQTT__PASSWORD": secret, "HA_INGESTOR_MQTT__USERNAME": name,
           "HA_INGESTOR_HOMEASSISTANT__TOKEN": secret, "HA_INGESTOR_INFLUXDB__DATABASE": name,
           "HA_INGESTOR_MQTT__CLIENT_ID": name}
    config = load(tmp_path, "", env=env)
    assert config.mqtt.password == secret and config.homeassistant.token == secret
    assert config.mqtt.username == name and config.influxdb.database == name
    assert config.mqtt.client_id == name


@pytest.mark.parametrize("value", ["0755", "abc #def", "true", "null", "[a, b]", "  x  ",
                                   "${HOME}", "!secret x", "1e3"])
def test_overrides_of_string_keys_reach_the_process_verbatim(tmp_path, value):
    result = cli(tmp_path, "homeassistant: {token: t}\n", "config", "show", "--json",
                 env={"HA_INGESTOR_MQTT__USERNAME": value, "HA_INGESTOR_MQTT__PASSWORD": value})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["mqtt"]["username"] == value


def test_typed_and_list_overrides_still_parse(tmp_path):
    config = load(tmp_path, "homeassistant: {token: t}\n", env={
        "HA_INGESTOR_MQTT__PORT": "1884", "HA_INGESTOR_MQTT__TOPICS": '["a/#", "b/+"]',
        "HA_INGESTOR_MQTT__EXCLUDE_TOPICS": "c/#", "HA_INGESTOR_INFLUXDB__GZIP": "false",
        "HA_INGESTOR_SCHEMA__STATE_CHANGED__TAGS": "{site: home}"})
    assert config.mqtt.port == 1884 and config.mqtt.topics == ("a/#", "b/+")
    assert config.mqtt.exclude_topics == ("c/#",) and config.influxdb.gzip is False
    assert config.schema.state_changed.tags == (("site", "home"),)


# ---- secrets never echoed ---------------------------------------------------------------------

@pytest.mark.parametrize("text, env, message", [
    ("mqtt: {username: u, password: [s3cr3t-value]}\n", {},
     "mqtt.password must be a string (value not shown: it is a secret)"),
    ("influxdb: {url: 'http://admin:s3cr3t-value@127.0.0.1:8086'}\n", {},
     "influxdb.url must not hold credentials (http://***@127.0.0.1:8086)"),
    ("homeassistant: {url: 'wss://u:s3cr3t-value@h/api/websocket'}\n", {},
     "homeassistant.url must not hold credentials (wss://***@h/api/websocket)"),
    ("influxdb: {password: {a: s3cr3t-value}}\n", {}, "influxdb.password must be a string"),
])
def test_errors_never_echo_a_secret(tmp_path, text, env, message):
    result = cli(tmp_path, "homeassistant: {enabled: false}\n" + text, "config", "check",
                 env=env)
    assert result.returncode == 2
    assert message in result.stderr
    assert "s3cr3t-value" not in result.stderr


# ---- TLS beside a plain URL ---------------------------------------------------------------------

@pytest.mark.parametrize("section, url, tls, message", [
    ("homeassistant", "ws://h:8123/api/websocket", "{verify: false}",
     "homeassistant.tls.verify is set but homeassistant.url is ws:// (no TLS): use a wss:// URL"),
    ("influxdb", "http://h:8086", "{enabled: true}",
     "influxdb.tls.enabled is set but influxdb.url is http:// (no TLS): use a https:// URL"),
    ("influxdb", "http://h:8086", "{ca_file: CA}",
     "influxdb.tls.ca_file is set but influxdb.url is http://"),
])
def test_tls_settings_beside_a_plain_url_are_refused(tmp_path, section, url, tls, message):
    (tmp_path / "ca.pem").write_text("x")
    tls = tls.replace("CA", str(tmp_path / "ca.pem"))
    result = cli(tmp_path, f"homeassistant: {{token: t}}\n{section}: {{url: '{url}', tls: {tls}}}"
                 "\n", "config", "check")
    assert result.returncode == 2, result.stdout
    assert message in result.stderr


def test_tls_settings_with_a_tls_url_are_kept(tmp_path):
    config = load(tmp_path, "homeassistant: {token: t, url: 'wss://h/api/websocket', "
                            "tls: {verify: false}}\n")
    assert config.homeassistant.tls.enabled and not config.homeassistant.tls.verify


# ---- alias bombs -------------------------------------------------------------------------------

def _alias_bomb(levels: int = 9) -> str:
    """The classic "billion laughs": 9 levels of 9 aliases, 9**9 strings once expanded."""
    lines = ["  - &a0 [" + ", ".join(["lol"] * 9) + "]"]
    for i in range(1, levels):
        lines.append(f"  - &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return ("schema:\n  state_changed:\n    tags_attributes:\n"
            + "\n".join("  " + line for line in lines) + f"\nmqtt:\n  topics: *a{levels - 1}\n")


def test_an_alias_bomb_is_refused_quickly_in_bounded_memory(tmp_path):
    result = cli(tmp_path, "homeassistant: {token: t}\n" + _alias_bomb(), "config", "check",
                 limit_memory=True)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "YAML aliases expand to more than 100000 values" in result.stderr


def test_a_recursive_alias_is_refused(tmp_path):
    result = cli(tmp_path, "homeassistant: {token: t}\nmqtt: &m {topics: [*m]}\n",
                 "config", "check")
    assert result.returncode == 2
    assert "a YAML alias refers to a node that contains it" in result.stderr


def test_ordinary_aliases_still_work(tmp_path):
    config = load(tmp_path, "homeassistant: {token: t}\nmqtt: {topics: &t ['a/#']}\n"
                            "schema: {mqtt: {rules: [{topic: 'a/+x', tags: {k: '{x}'}}]}}\n")
    assert config.mqtt.topics == ("a/#",)


# ---- config show | config check - ---------------------------------------------------------------

FULL = """\
homeassistant: {token: '${HA_TOKEN}', event_types: [state_changed, call_service]}
mqtt: {username: m, password_file: PWFILE, topics: ['z2m/#'], exclude_topics: ['z2m/bridge/#']}
influxdb: {api: v2, org: o, bucket: b, token: !secret influx}
metrics: {ports: {writer: 0}}
schema:
  state_changed:
    tags: {site: home, '': x}
    include: {domains: [sensor]}
    component_config: {sensor.t: {override_measurement: temp}}
    component_config_domain: {light: {ignore_attributes: [rgb]}}
    component_config_glob: {'sensor.*_power': {override_measurement: W}}
  mqtt:
    presets: [zigbee2mqtt, {name: tasmota, prefix: home}]
    rules: [{topic: 'a/+dev', tags: {d: '{dev}'}, match: {dev: [x, y]}}]
"""


@pytest.mark.parametrize("fmt", [[], ["--json"]])
def test_config_show_prints_a_config_that_config_check_accepts(tmp_path, fmt):
    (tmp_path / "pw").write_text("mqtt-secret\n")
    (tmp_path / "secrets.yaml").write_text("influx: influx-secret\n")
    text = FULL.replace("PWFILE", str(tmp_path / "pw")).replace("'': x", "extra: x")
    env = {"HA_TOKEN": "ha-secret"}
    shown = cli(tmp_path, text, "config", "show", *fmt, env=env)
    assert shown.returncode == 0, shown.stderr
    for secret in ("mqtt-secret", "influx-secret", "ha-secret"):
        assert secret not in shown.stdout
    again = cli(tmp_path, text, "config", "check", "-", stdin=shown.stdout)
    assert again.returncode == 0, again.stderr
    assert "config OK: <stdin>" in again.stdout
    shown_again = cli(tmp_path, text, "config", "show", "--json")
    assert shown_again.returncode != 0      # HA_TOKEN unset here: the file needs it
    reloaded = load_config(None, env={}, text=shown.stdout)
    original = load(tmp_path, text, env=env)
    assert reloaded.schema == original.schema
    assert reloaded.mqtt.topics == original.mqtt.topics
    assert reloaded.metrics == original.metrics
