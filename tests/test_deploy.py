"""The deployment files and docs agree with the code: valid YAML and JSON, every ``ha-ingestor``
command they use exists, ports and paths match the config defaults, the dashboard's metrics exist,
and the configuration reference is the one generated from the config code.

Docker, Kubernetes and systemd are not running here, so this is what can be checked without them.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

from ha_ingestor import metrics  # noqa: F401  (registers every metric)
from ha_ingestor import metrics_influx  # noqa: F401  (and those of metrics.influxdb)
from ha_ingestor.config import load_config
from ha_ingestor.config.model import METRICS_PORTS
from ha_ingestor.errors import EXIT_AUTH, EXIT_CONFIG

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "kubernetes" / "ha-ingestor.yaml"
SYSTEMD = DEPLOY / "systemd"
DASHBOARD = DEPLOY / "grafana" / "ha-ingestor-dashboard.json"
CLI = [sys.executable, "-m", "ha_ingestor"]
GLOBAL_OPTIONS = {"--config": 1, "--log-level": 1, "--log-format": 1}
CONTAINER_QUEUE_DIR = "/var/lib/ha-ingestor/queue"
# which component a command runs, and so which metrics port it serves
COMPONENT_OF = {"collect mqtt": "mqtt", "collect ha": "ha", "write": "writer", "run": "run"}


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def k8s_docs() -> list[dict]:
    return [doc for doc in yaml.safe_load_all(K8S.read_text()) if doc]


def k8s_containers() -> list[dict]:
    deployment = next(d for d in k8s_docs() if d["kind"] == "Deployment")
    return deployment["spec"]["template"]["spec"]["containers"]


def command_words(args: list[str]) -> list[str]:
    """``["--config", "x", "--log-format", "json", "collect", "mqtt"]`` -> ``["collect", "mqtt"]``."""
    words, skip = [], 0
    for arg in args:
        if skip:
            skip -= 1
        elif arg in GLOBAL_OPTIONS:
            skip = GLOBAL_OPTIONS[arg]
        elif not arg.startswith("-"):
            words.append(arg)
    return words


def systemd_exec(unit: Path) -> list[str]:
    line = next(l for l in unit.read_text().splitlines() if l.startswith("ExecStart="))
    argv = shlex.split(line.split("=", 1)[1])
    assert argv[0].endswith("/ha-ingestor"), line
    return argv[1:]


def systemd_units() -> list[Path]:
    return sorted(SYSTEMD.glob("*.service"))


def deploy_commands() -> set[str]:
    """Every ``ha-ingestor`` command line the deploy files run."""
    found = set()
    for service in compose()["services"].values():
        if str(service.get("image", "")).startswith("${HA_INGESTOR_IMAGE"):
            found.add(" ".join(command_words(service["command"])))
    found |= {" ".join(command_words(c["args"])) for c in k8s_containers()}
    found |= {" ".join(command_words(systemd_exec(unit))) for unit in systemd_units()}
    cmd = re.search(r'^CMD (\[.*\])$', (DEPLOY / "Dockerfile").read_text(), re.M)
    found.add(" ".join(json.loads(cmd.group(1))))
    return found


def code_spans(text: str) -> list[str]:
    """Inline `code` and the lines of fenced blocks: where docs show commands to type."""
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S)
    without = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.M | re.S)
    return [line for block in fenced for line in block.splitlines()] + \
        re.findall(r"`([^`\n]+)`", without)


def documented_commands() -> dict[str, set[str]]:
    """``ha-ingestor <words> [--options]`` in the docs' code: command path -> options used."""
    found: dict[str, set[str]] = {}
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        if not doc.exists():
            continue
        for span in code_spans(doc.read_text()):
            span = span.split(" #", 1)[0]                 # a shell comment after the command
            for match in re.finditer(r"ha-ingestor((?: +[^\s|;&`]+)*)", span):
                words, options = [], set()
                for token in match.group(1).split():
                    if token.startswith("--"):
                        options.add(token.split("=", 1)[0])
                    elif re.fullmatch(r"[a-z][a-z-]*", token) and not options:
                        words.append(token)
                    elif not token.startswith("-"):
                        continue
                command = " ".join(command_words(words))
                if command:
                    found.setdefault(command, set()).update(options)
    return found


def click_command(words: str):
    """The click command for ``words`` (``queue status``), or None if there is no such command.
    Words after a command that is not a group are its arguments (``completion fish``)."""
    from ha_ingestor.cli import cli
    command = cli
    for word in words.split():
        if not hasattr(command, "commands"):
            break
        sub = command.commands.get(word)
        if sub is None:
            return None
        command = sub
    return command


def command_exists(words: str) -> tuple[bool, str]:
    """Longest prefix of ``words`` that is a command: ``queue status`` in ``queue status foo``
    would be rejected by click, so we check the words as given."""
    result = subprocess.run(CLI + words.split() + ["--help"], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    return result.returncode == 0, result.stderr + result.stdout


# ---- commands -------------------------------------------------------------------------------

def test_every_command_in_the_deploy_files_exists():
    commands = deploy_commands()
    assert {"run", "write", "collect mqtt", "collect ha"} <= commands
    for words in sorted(commands):
        ok, output = command_exists(words)
        assert ok, f"deploy files run `ha-ingestor {words}`, which the CLI rejects:\n{output}"


def test_every_command_and_option_in_the_docs_exists():
    from ha_ingestor.cli import cli
    commands = documented_commands()
    assert "queue status" in commands and "run" in commands
    global_options = {opt for param in cli.params for opt in param.opts}
    for words, options in sorted(commands.items()):
        command = click_command(words)
        assert command is not None, f"docs mention `ha-ingestor {words}`, which does not exist"
        known = {opt for param in command.params for opt in param.opts} | global_options
        known.add("--help")
        assert options <= known, f"`ha-ingestor {words}` has no option {options - known}"


# ---- Docker ---------------------------------------------------------------------------------

def test_dockerfile_is_slim_non_root_with_a_healthcheck():
    text = (DEPLOY / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M).group(1)
    assert re.fullmatch(r"python:3\.\d+-slim-\w+", base), base
    assert re.findall(r"^FROM (\S+)", text, re.M)[-1] == "${BASE_IMAGE}"
    uid = re.search(r"^ARG UID=(\d+)$", text, re.M).group(1)
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user[-1] == "${UID}:${UID}" and int(uid) > 0      # numeric, for runAsNonRoot
    assert re.search(r"^HEALTHCHECK .*\n?.*CMD", text, re.M)
    assert re.search(r'^ENTRYPOINT \["ha-ingestor"\]', text, re.M)
    exposed = {int(p) for p in re.search(r"^EXPOSE (.+)$", text, re.M).group(1).split()}
    assert exposed == set(METRICS_PORTS.values())
    for source in re.findall(r"^COPY (?!--)(\S+)", text, re.M):
        assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
    assert f"HA_INGESTOR_QUEUE__DIR={CONTAINER_QUEUE_DIR}" in text


def test_compose_services_ports_volumes_and_restart_policies():
    data = compose()
    services = data["services"]
    assert {"mosquitto", "influxdb", "writer", "collect-mqtt", "collect-ha"} <= set(services)
    assert services["influxdb"]["image"].startswith("influxdb:1.8")     # profile "try" only
    assert "./mosquitto.conf:/mosquitto/config/mosquitto.conf:ro" in \
        services["mosquitto"]["volumes"]
    for name, service in services.items():
        assert service.get("restart") in ("unless-stopped", "always", "on-failure"), name
        if name in ("mosquitto", "influxdb"):
            continue
        component = COMPONENT_OF[" ".join(command_words(service["command"]))]
        port = METRICS_PORTS[component]
        env = service["environment"]
        assert env["HEALTHCHECK_PORT"] == str(port), name
        assert service["ports"] == [f"127.0.0.1:{port}:{port}"], name
        assert f"queue:{CONTAINER_QUEUE_DIR}" in service["volumes"], name
        assert env["HA_INGESTOR_QUEUE__DIR"] == CONTAINER_QUEUE_DIR
        assert env["HA_INGESTOR_METRICS__HOST"] == "0.0.0.0"
    assert "queue" in data["volumes"]
    # compose stops dependants first: the collectors before the writer
    assert "writer" in services["collect-mqtt"]["depends_on"]
    assert "writer" in services["collect-ha"]["depends_on"]


def test_mosquitto_conf_used_by_compose_keeps_messages():
    conf = DEPLOY / "mosquitto.conf"
    if not conf.exists():
        pytest.fail("deploy/mosquitto.conf (mounted by docker-compose.yml) is missing")
    settings = dict(line.split(None, 1) for line in conf.read_text().splitlines()
                    if line.strip() and not line.lstrip().startswith("#") and " " in line)
    assert settings.get("persistence", "").strip() == "true"
    assert int(settings.get("max_queued_messages", "1000").strip()) > 1000
    location = settings.get("persistence_location", "").strip()
    assert location.startswith("/mosquitto/data"), "compose mounts the data volume there"


# ---- Kubernetes -----------------------------------------------------------------------------

def test_kubernetes_pod_has_three_containers_one_pvc_and_probes():
    kinds = [d["kind"] for d in k8s_docs()]
    assert kinds.count("PersistentVolumeClaim") == 1 and kinds.count("Deployment") == 1
    deployment = next(d for d in k8s_docs() if d["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 1
    containers = k8s_containers()
    assert len(containers) == 3
    for container in containers:
        component = COMPONENT_OF[" ".join(command_words(container["args"]))]
        port = METRICS_PORTS[component]
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
        assert container["ports"][0]["containerPort"] == port
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts["queue"] == CONTAINER_QUEUE_DIR


def test_kubernetes_config_map_is_a_valid_config(tmp_path):
    config_map = next(d for d in k8s_docs() if d["kind"] == "ConfigMap")
    text = config_map["data"]["ha-ingestor.yaml"]
    secrets = {}
    for name in re.findall(r"_file: /run/secrets/ha-ingestor/(\S+)", text):
        secrets[name] = tmp_path / name
        secrets[name].write_text("secret\n")
        text = text.replace(f"/run/secrets/ha-ingestor/{name}", str(secrets[name]))
    (tmp_path / "c.yaml").write_text(text)
    config = load_config(tmp_path / "c.yaml", env={})
    assert str(config.queue.dir) == CONTAINER_QUEUE_DIR
    assert config.metrics.ports == METRICS_PORTS
    assert config.homeassistant.token == "secret"
    pod = next(d for d in k8s_docs() if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > config.run.shutdown_timeout


# ---- systemd --------------------------------------------------------------------------------

def test_systemd_units_do_not_restart_on_config_or_auth_errors():
    units = systemd_units()
    assert {u.name for u in units} >= {"ha-ingestor.service", "ha-ingestor-writer.service",
                                       "ha-ingestor-mqtt.service", "ha-ingestor-ha.service"}
    for unit in units:
        text = unit.read_text()
        prevent = re.search(r"^RestartPreventExitStatus=(.+)$", text, re.M).group(1).split()
        assert {int(code) for code in prevent} == {EXIT_CONFIG, EXIT_AUTH}, unit.name
        assert re.search(r"^Restart=on-failure$", text, re.M), unit.name
        assert re.search(r"^User=ha-ingestor$", text, re.M), unit.name
        assert f"HA_INGESTOR_QUEUE__DIR={CONTAINER_QUEUE_DIR}" in text
        assert "ReadWritePaths=/var/lib/ha-ingestor" in text
        component = COMPONENT_OF[" ".join(command_words(systemd_exec(unit)))]
        if component != "run":
            assert f"127.0.0.1:{METRICS_PORTS[component]}/" in text, unit.name
        stop = int(re.search(r"^TimeoutStopSec=(\d+)$", text, re.M).group(1))
        assert stop > 30, "longer than run.shutdown_timeout's default"


def test_systemd_target_wants_every_component_unit():
    target = (SYSTEMD / "ha-ingestor.target").read_text()
    for name in ("writer", "mqtt", "ha"):
        assert f"ha-ingestor-{name}.service" in target


# ---- example config and dashboard -----------------------------------------------------------

def test_example_config_loads_and_matches_the_defaults():
    config = load_config(DEPLOY / "ha-ingestor.example.yaml", env={"HA_TOKEN": "t"})
    defaults = load_config(None, env={"HA_INGESTOR_HOMEASSISTANT__TOKEN": "t"})
    assert config.metrics.ports == defaults.metrics.ports == METRICS_PORTS
    assert config.queue == defaults.queue
    assert config.run == defaults.run
    for section in ("mqtt", "influxdb"):
        assert getattr(config, section) == getattr(defaults, section), section


def test_example_config_commented_schema_example_is_valid(tmp_path):
    text = (DEPLOY / "ha-ingestor.example.yaml").read_text()
    uncommented = re.sub(r"^# (schema:|  .*)$", r"\1", text, flags=re.M)
    assert "\nschema:" in uncommented
    (tmp_path / "c.yaml").write_text(uncommented)
    config = load_config(tmp_path / "c.yaml", env={"HA_TOKEN": "t"})
    assert [p.name for p in config.schema.mqtt.presets] == ["zigbee2mqtt", "tasmota", "esphome"]


def test_dashboard_uses_only_metrics_the_code_exports():
    dashboard = json.loads(DASHBOARD.read_text())
    exported = set()
    for collector in REGISTRY._collector_to_names:        # every name, with _total/_bucket...
        exported |= set(REGISTRY._collector_to_names[collector])
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    used = {name for expr in exprs for name in re.findall(r"\bha_ingestor_[a-z_]+", expr)}
    assert used and used <= exported, used - exported
    ours = {n for n in exported if n.startswith("ha_ingestor_")}
    families = {re.sub(r"_(total|bucket|sum|count|created)$", "", n) for n in ours}
    shown = {re.sub(r"_(total|bucket|sum|count|created)$", "", n) for n in used}
    assert families <= shown, f"metrics without a panel: {sorted(families - shown)}"


# ---- docs -----------------------------------------------------------------------------------

def test_configuration_reference_is_generated_from_the_code():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_config_reference.py"),
                             "--check"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_configuration_reference_lists_every_key():
    from ha_ingestor.config import reference_rows
    doc = (ROOT / "docs" / "configuration.md").read_text()
    for key, _kind, _default, env, _doc in reference_rows():
        assert f"`{key}`" in doc and f"`{env}`" in doc


# ---- make demo ------------------------------------------------------------------------------

def test_demo_runs_to_the_end_with_the_ha_test_server(tmp_path, mosquitto_factory):
    """`make demo ARGS="--fake-ha --seconds 5"`: both sources land in InfluxDB, all stopped."""
    del mosquitto_factory          # only for its check that Mosquitto is installed
    from tests.support.procs import require_binary
    require_binary("influxd", "influxdb")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--fake-ha",
                             "--seconds", "5", "--workdir", str(tmp_path / "demo")],
                            capture_output=True, text=True, timeout=180, cwd=ROOT)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "$ ha-ingestor queue status" in out
    totals = dict(re.findall(r"^total (ha|mqtt)\s+(\d+)$", out, re.M))
    assert int(totals["ha"]) > 0 and int(totals["mqtt"]) > 0, out
    assert "OK: HA and MQTT data reached InfluxDB" in out
    assert "ha-ingestor run stopped with exit code 0" in out
    assert not processes_mentioning(str(tmp_path)), "the demo left processes running"


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text in (entry / "cmdline").read_bytes().decode(
                    errors="replace"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids
