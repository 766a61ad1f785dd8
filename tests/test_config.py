"""Config: every invalid key names itself and exits 2; env overrides and *_file secrets work;
`config show` never prints a secret."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ha_ingestor.config import load_config

CLI = [sys.executable, "-m", "ha_ingestor"]
VALID = "homeassistant: {token: tok-123}\n"


def cli(tmp_path, yaml_text: str, *args: str, env: dict | None = None):
    path = tmp_path / "ha-ingestor.yaml"
    path.write_text(yaml_text)
    base = {"PATH": "/usr/bin:/bin"}
    return subprocess.run(CLI + ["--config", str(path), *args], capture_output=True, text=True,
                          env={**base, **(env or {})}, cwd=tmp_path, timeout=60)


@pytest.mark.parametrize("yaml_text, message", [
    ("mqtt: {qos: 3}", "mqtt.qos must be 0, 1 or 2, got 3"),
    ("mqtt: {port: 70000}", "mqtt.port must be between 1 and 65535, got 70000"),
    ("mqtt: {port: abc}", "mqtt.port must be an integer, got 'abc'"),
    ("mqtt: {protocol: 4}", "mqtt.protocol must be 3.1.1 or 5, got 4"),
    ("mqtt: {hots: x}", "mqtt.hots is not a known key"),
    ("mqtt: {topics: 5}", "mqtt.topics must be a list of strings, got 5"),
    ("mqtt: {tls: {ca_file: /nonexistent/ca.pem}}",
     "mqtt.tls.ca_file: file '/nonexistent/ca.pem' does not exist"),
    ("queue: {max_bytes: lots}", "queue.max_bytes must be a size such as"),
    ("queue: {batch_interval: soon}", "queue.batch_interval must be a duration"),
    ("influxdb: {api: v3}", "influxdb.api must be v1 or v2, got 'v3'"),
    ("influxdb: {url: 'localhost:8086'}", "influxdb.url must be a URL starting with http://"),
    ("influxdb: {api: v2, org: o, bucket: b}", "influxdb.token is required"),
    ("homeassistant: {url: 'http://x/api/websocket'}", "homeassistant.url must be a URL"),
    ("homeassistant: {token: null}", "homeassistant.token is required"),
    ("metrics: {ports: {writer: -1}}", "metrics.ports.writer must be between 0 and 65535"),
    ("mqtt: [1, 2]", "mqtt must be a mapping"),
    ("nonsense: {}", "nonsense is not a known section"),
    ("mqtt: {port: [", "is not valid YAML at line"),
    ("homeassistant: {token: '${NOT_SET_ANYWHERE}'}",
     "homeassistant.token refers to environment variable NOT_SET_ANYWHERE, which is not set"),
])
def test_invalid_key_is_named_and_exits_2(tmp_path, yaml_text, message):
    text = yaml_text if "homeassistant" in yaml_text else VALID + yaml_text
    result = cli(tmp_path, text, "config", "check")
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr


def test_missing_config_file_is_named(tmp_path):
    result = subprocess.run(CLI + ["--config", str(tmp_path / "nope.yaml"), "config", "check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "nope.yaml' not found" in result.stderr


def test_env_override_and_substitution(tmp_path):
    result = cli(tmp_path, "homeassistant: {token: '${HA_TOKEN}'}\nmqtt: {port: 1883}\n",
                 "config", "show", "--json",
                 env={"HA_TOKEN": "abc", "HA_INGESTOR_MQTT__PORT": "1884",
                      "HA_INGESTOR_MQTT__TOPICS": '["zigbee2mqtt/#", "tasmota/#"]',
                      "HA_INGESTOR_INFLUXDB__BATCH_SIZE": "250"})
    assert result.returncode == 0, result.stderr
    import json
    shown = json.loads(result.stdout)
    assert shown["mqtt"]["port"] == 1884
    assert shown["mqtt"]["topics"] == ["zigbee2mqtt/#", "tasmota/#"]
    assert shown["influxdb"]["batch_size"] == 250


def test_env_override_is_validated_like_the_file(tmp_path):
    result = cli(tmp_path, VALID, "config", "check", env={"HA_INGESTOR_MQTT__QOS": "7"})
    assert result.returncode == 2
    assert "mqtt.qos must be 0, 1 or 2, got '7'" in result.stderr


def test_secret_files_are_read_and_never_shown(tmp_path):
    (tmp_path / "token").write_text("very-secret-token\n")
    (tmp_path / "influx_pw").write_text("influx-secret")
    text = (f"homeassistant: {{token_file: {tmp_path / 'token'}}}\n"
            f"influxdb: {{username: u, password_file: {tmp_path / 'influx_pw'}}}\n"
            "mqtt: {username: m, password: mqtt-secret}\n")
    config = load_config_from(tmp_path, text)
    assert config.homeassistant.token == "very-secret-token"
    assert config.influxdb.password == "influx-secret"
    for fmt in ([], ["--json"]):
        result = cli(tmp_path, text, "config", "show", *fmt)
        assert result.returncode == 0, result.stderr
        for secret in ("very-secret-token", "influx-secret", "mqtt-secret"):
            assert secret not in result.stdout
        assert "***" in result.stdout


def test_unreadable_secret_file_is_named(tmp_path):
    result = cli(tmp_path, "homeassistant: {token_file: /nonexistent/tok}\n", "config", "check")
    assert result.returncode == 2
    assert "homeassistant.token_file: cannot read secret file '/nonexistent/tok'" in result.stderr


def test_defaults_and_types(tmp_path):
    config = load_config_from(tmp_path, VALID)
    assert config.queue.max_bytes == 2 * 2**30
    assert config.queue.batch_interval == 0.05
    assert config.mqtt.topics == ("#",) and config.mqtt.qos == 1
    assert config.influxdb.flush_interval == 1.0 and config.influxdb.api == "v1"
    assert config.metrics.ports == {"run": 9100, "mqtt": 9101, "ha": 9102, "writer": 9103,
                                    "central": 9104}
    with pytest.raises(Exception):
        config.mqtt.port = 1                      # frozen


def test_config_check_ok(tmp_path):
    result = cli(tmp_path, VALID, "config", "check")
    assert result.returncode == 0, result.stderr
    assert "config OK" in result.stdout


def load_config_from(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_config(path, env={})
