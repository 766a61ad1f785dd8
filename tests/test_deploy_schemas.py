"""The deploy files against the tools and schemas that define them: docker-compose.yml against the
Compose Specification's JSON schema (as vendored by check-jsonschema), the Kubernetes manifests
against the Kubernetes API schemas (kubernetes-validate, strict), the systemd units with
``systemd-analyze verify`` and ``security``, the Dockerfiles with hadolint. Each check is also
shown to fail on a file with a mistake, so a pass means something.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.support.procs import require_binary

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "kubernetes" / "ha-ingestor.yaml"
SYSTEMD = DEPLOY / "systemd"
DOCKERFILES = [DEPLOY / "Dockerfile", DEPLOY / "homeassistant-addon" / "ha-ingestor" / "Dockerfile"]
KUBERNETES_VERSION = "1.33.0"
MAX_EXPOSURE = 4.0
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


# ---- compose -------------------------------------------------------------------------------

def compose_schema() -> dict:
    vendored = resources.files("check_jsonschema") / "builtin_schemas" / "vendor"
    return json.loads((vendored / "compose-spec.json").read_text())


def compose_errors(document: dict) -> list[str]:
    validator = jsonschema.validators.validator_for(compose_schema())(compose_schema())
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(document)]


def env_example() -> dict[str, str]:
    lines = (DEPLOY / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def interpolate(value, env: dict[str, str]):
    """Compose's interpolation: ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}``, ``$$``."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.groups()
        if env.get(name):
            return env[name]
        if op and op.endswith("?"):
            raise KeyError(f"{name}: {arg}")
        return arg if op else env.get(name, "")
    return _VAR.sub(replace, value)


def test_compose_file_validates_against_the_compose_spec():
    raw = yaml.safe_load(COMPOSE.read_text())
    assert compose_errors(raw) == []
    filled = {**env_example(), "HA_TOKEN": "t", "MQTT_PASSWORD": "p", "INFLUXDB_PASSWORD": "p"}
    assert compose_errors(interpolate(raw, filled)) == []


def test_the_compose_spec_check_catches_mistakes():
    raw = yaml.safe_load(COMPOSE.read_text())
    assert compose_errors({**raw, "servics": {}})
    broken = json.loads(json.dumps(raw))
    broken["services"]["writer"]["depends_on"]["influxdb"]["condition"] = "service_ready"
    assert compose_errors(broken)


def test_compose_points_at_the_users_services_and_bundles_nothing_by_default():
    raw = yaml.safe_load(COMPOSE.read_text())
    services = raw["services"]
    bundled = {name for name, s in services.items() if "profiles" in s}
    assert bundled == {"mosquitto", "influxdb"}
    assert all(services[name]["profiles"] == ["try"] for name in bundled)
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    env = services["writer"]["environment"]
    for key in ("HA_INGESTOR_MQTT__HOST", "HA_INGESTOR_HOMEASSISTANT__URL",
                "HA_INGESTOR_INFLUXDB__URL", "HA_TOKEN"):
        assert re.fullmatch(r"\$\{[A-Z_]+:\?.+\}", env[key]), f"{key} must come from .env"
    with pytest.raises(KeyError, match="MQTT_HOST"):
        interpolate(raw, {**env_example(), "MQTT_HOST": ""})
    conf = (DEPLOY / "mosquitto.conf").read_text()
    assert re.search(r"^allow_anonymous false$", conf, re.M)
    assert re.search(r"^password_file /mosquitto/data/passwd$", conf, re.M)


def test_env_example_lists_every_variable_compose_reads():
    text = COMPOSE.read_text()
    used = {m.group(1) for m in _VAR.finditer(text) if m.group(1)}
    used |= {s["environment"] for s in yaml.safe_load(text)["secrets"].values()}
    assert used and used <= set(env_example()), used - set(env_example())


# ---- Kubernetes ----------------------------------------------------------------------------

def k8s_docs() -> list[dict]:
    return [doc for doc in yaml.safe_load_all(K8S.read_text()) if doc]


def test_kubernetes_manifests_validate_against_the_kubernetes_schema():
    for doc in k8s_docs():
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    pod = next(d for d in k8s_docs() if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    for container in pod["containers"]:
        assert container["imagePullPolicy"] == "IfNotPresent"
        assert not container["image"].endswith(":latest") and ":" in container["image"]


def test_the_kubernetes_check_catches_mistakes():
    deployment = next(d for d in k8s_docs() if d["kind"] == "Deployment")
    misspelt = json.loads(json.dumps(deployment))
    misspelt["spec"]["replica"] = misspelt["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSION, strict=True)
    wrong_type = json.loads(json.dumps(deployment))
    wrong_type["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "45s"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, KUBERNETES_VERSION, strict=True)


# ---- systemd -------------------------------------------------------------------------------

def installed_units(tmp_path: Path) -> list[Path]:
    """The units as installed, ExecStart pointing at this venv's ha-ingestor (verify checks it)."""
    cli = Path(sys.executable).with_name("ha-ingestor")
    for unit in SYSTEMD.iterdir():
        text = unit.read_text().replace("/opt/ha-ingestor/bin/ha-ingestor", str(cli))
        (tmp_path / unit.name).write_text(text)
    return sorted(tmp_path.iterdir())


def test_systemd_units_pass_systemd_analyze_verify(tmp_path):
    """systemd's own parser: unknown keys or bad values print a warning naming the file."""
    analyze = require_binary("systemd-analyze", "systemd")
    units = installed_units(tmp_path)
    result = subprocess.run([analyze, "verify", *map(str, units)], capture_output=True,
                            text=True, timeout=60)
    complaints = [line for line in (result.stdout + result.stderr).splitlines()
                  if str(tmp_path) in line]
    assert result.returncode == 0 and not complaints, "\n".join(complaints)
    (tmp_path / "bad.service").write_text("[Service]\nExecStart=/bin/true\nUMask=0999\n")
    bad = subprocess.run([analyze, "verify", str(tmp_path / "bad.service")],
                         capture_output=True, text=True, timeout=60)
    assert "bad.service:3: Failed to parse mode value" in bad.stderr, bad.stderr


def exposure(analyze: str, unit: Path) -> float:
    result = subprocess.run([analyze, "security", "--offline=true", str(unit)],
                            capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert found, result.stdout[-2000:] + result.stderr
    return float(found.group(1))


def test_systemd_units_are_hardened(tmp_path):
    analyze = require_binary("systemd-analyze", "systemd")
    for unit in installed_units(tmp_path):
        if unit.suffix != ".service":
            continue
        assert re.search(r"^UMask=0077$", unit.read_text(), re.M), unit.name
        level = exposure(analyze, unit)
        assert level <= MAX_EXPOSURE, f"{unit.name}: exposure {level} > {MAX_EXPOSURE}"
    (tmp_path / "plain.service").write_text("[Service]\nExecStart=/bin/true\n")
    assert exposure(analyze, tmp_path / "plain.service") > MAX_EXPOSURE


# ---- Dockerfiles and license ---------------------------------------------------------------

def hadolint(*paths: Path) -> subprocess.CompletedProcess:
    binary = Path(sys.executable).with_name("hadolint")
    return subprocess.run([str(binary), "--no-color", *map(str, paths)], capture_output=True,
                          text=True, timeout=60)


def test_dockerfiles_pass_hadolint(tmp_path):
    result = hadolint(*DOCKERFILES)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    sloppy = tmp_path / "Dockerfile"
    sloppy.write_text("FROM debian\nRUN apt-get update && apt-get install -y curl\n")
    complaints = hadolint(sloppy).stdout
    assert "DL3006" in complaints and "DL3008" in complaints, complaints


def test_license_is_apache_2_in_the_file_and_the_package_metadata():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
