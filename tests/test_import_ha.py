"""``config import-ha`` against Home Assistant's own code, on every tested release.

Three real-shaped HA configurations (a v1 block with include/exclude and component_config behind
``!include``, a v2 block with ``!secret``, a packages layout with ``!include_dir_named``,
``!env_var`` and secrets in a sub-folder) and generated ones (hypothesis): each is imported by the
CLI, the result passes ``config check`` with the variables it names, and for the shared sample
events the writer's converter writes exactly the lines HA's integration writes with that block
(HA itself loads the folder, tests/support/ha_influx_reference.py), and connects where HA's
client connects, with the same credentials. The v1 configurations also go through the real
writer into InfluxDB 1.6.7, beside HA's own lines written to another database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ha_ingestor.config import load_config
from ha_ingestor.envelope import ha_event
from ha_ingestor.haimport import import_ha
from ha_ingestor.queue import Producer
from tests.support.ha_influx_reference import HAReference
from tests.support.procs import wait_until
from tests.test_schema_ha_parity import _documented_difference, corner_cases
from writer.convert import ConversionError, Converter

pytestmark = pytest.mark.realha

CLI = [sys.executable, "-m", "ha_ingestor"]
EVENTS = corner_cases()
HA_TOKEN = "ha-token-not-used-here"


@pytest.fixture(scope="module")
def reference(ha_version):
    with HAReference(ha_version) as ha:
        yield ha


# ---- the three real-shaped configurations -------------------------------------------------------

def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root / "configuration.yaml"


def config_v1_include(port: int) -> tuple[dict, dict]:
    return {"configuration.yaml": "homeassistant:\n  name: Home\nhttp:\n  server_port: 8124\n"
                                  "influxdb: !include influxdb.yaml\n",
            "influxdb.yaml": f"""\
host: 127.0.0.1
port: {port}
database: home_assistant
username: homeassistant
password: inline-v1-password
max_retries: 3
default_measurement: state
tags: {{instance: prod, floor: 1}}
tags_attributes: [friendly_name]
ignore_attributes: [icon]
include:
  domains: [sensor, binary_sensor, input_number, input_boolean, counter, automation, switch]
  entities: Person.Me, sun.sun
exclude:
  entity_globs: ["sensor.*_unit"]
  entities: [sensor.weird]
component_config:
  sensor.temp: {{override_measurement: exact, ignore_attributes: [a]}}
component_config_domain:
  input_boolean: {{override_measurement: booleans}}
component_config_glob:
  "sensor.t*": {{override_measurement: glob}}
"""}, {}


def config_v2_secret(port: int) -> tuple[dict, dict]:
    return {"configuration.yaml": "influxdb:\n  api_version: 2\n  ssl: off\n"
                                  "  host: !secret influx_host\n  port: !secret influx_port\n"
                                  "  token: !secret influx_token\n  organization: home\n"
                                  "  bucket: !secret influx_bucket\n"
                                  "  measurement_attr: domain__device_class\n"
                                  "  tags: {source: ha}\n",
            "secrets.yaml": f"influx_host: 127.0.0.1\ninflux_port: {port}\n"
                            "influx_token: v2-token-secret\ninflux_bucket: homeassistant\n"}, {}


def config_packages(port: int) -> tuple[dict, dict]:
    return {"configuration.yaml": "homeassistant:\n  packages: !include_dir_named packages\n"
                                  "influxdb:\n  tags: {site: home}\n",
            "packages/influx/connection.yaml": f"influxdb:\n  host: 127.0.0.1\n  port: {port}\n"
                                               "  database: !env_var INFLUX_DB home_assistant\n"
                                               "  username: !secret influx_user\n"
                                               "  password: !secret influx_password\n",
            "packages/filters/influx_filters.yaml": "influxdb:\n  include:\n"
                                                    "    entity_globs: ['sensor.*']\n"
                                                    "  exclude:\n    entities: [sensor.temp]\n"
                                                    "  ignore_attributes: [icon, mode]\n",
            "packages/influx/secrets.yaml": "influx_password: pkg-password-secret\n",
            "secrets.yaml": "influx_user: homeassistant\ninflux_password: wrong-level\n"}, {}


LAYOUTS = {"v1_include": config_v1_include, "v2_secret": config_v2_secret,
           "packages": config_packages}
SECRET_VALUES = ("inline-v1-password", "v2-token-secret", "pkg-password-secret", "wrong-level")


def run_cli(*args: str, env: dict | None = None, stdin: str | None = None, cwd=None):
    base = {k: v for k, v in os.environ.items() if not k.startswith("HA_INGESTOR_")}
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=120,
                          env={**base, **(env or {})}, input=stdin, cwd=cwd)


def variables_for(text: str, secrets: dict) -> dict:
    """The values of the variables the import names, as an administrator would set them."""
    env = {"HA_TOKEN": HA_TOKEN}
    header = [line[4:] for line in text.splitlines() if line.startswith("#   ")]
    for line in header:
        name, _, what = line.partition(": ")
        if "secret '" in what:
            env[name] = str(secrets[what.split("'")[1]])
        elif "written inline" in what:
            env[name] = secrets["inline"]
    return env


def our_lines(config) -> list[str | None]:
    converter = Converter(config.schema)
    lines = []
    for event in EVENTS:
        try:
            lines.append(converter.convert(ha_event(event)))
        except ConversionError as exc:
            lines.append(f"error: {exc}")
    return lines


def assert_same_lines(ours: list, theirs: list) -> None:
    differences = [f"{e['data']}\n  HA:   {t}\n  ours: {o}" for e, o, t in
                   zip(EVENTS, ours, theirs) if o != t and not _documented_difference(o, t)]
    assert not differences, "\n".join(differences[:5])


def assert_same_connection(config, client: dict) -> None:
    influx = config.influxdb
    if influx.api == "v1":
        assert (influx.url, influx.database, influx.username, influx.password) == \
            (client["url"], client["database"], client["username"], client["password"])
    else:
        assert (influx.url, influx.org, influx.token) == \
            (client["url"], client["org"], client["token"])
    if influx.url.startswith("https://"):        # TLS options mean nothing over http://
        assert influx.tls.verify == bool(client["verify"])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_real_shaped_configuration(tmp_path, reference, influxdb, layout):
    files, _ = LAYOUTS[layout](influxdb.port)
    config_path = write_tree(tmp_path / "ha", files)
    env = {"INFLUX_DB": "home_assistant"} if layout == "packages" else {}
    imported = run_cli("config", "import-ha", str(config_path), env=env)
    assert imported.returncode == 0, imported.stderr
    text = imported.stdout
    for secret in SECRET_VALUES:
        assert secret not in text
    secrets = {**yaml.safe_load(files.get("secrets.yaml", "{}")),
               **yaml.safe_load(files.get("packages/influx/secrets.yaml", "{}")),
               "inline": "inline-v1-password"}
    variables = variables_for(text, secrets)
    ours_path = tmp_path / "ha-ingestor.yaml"
    ours_path.write_text(text)
    checked = run_cli("--config", str(ours_path), "config", "check", env={**env, **variables})
    assert checked.returncode == 0, checked.stderr
    config = load_config(ours_path, env={**env, **variables})
    answer = reference.ask(config_path.parent, EVENTS, env=env)
    assert "error" not in answer, answer
    assert_same_connection(config, answer["client"])
    assert_same_lines(our_lines(config), answer["lines"])
    if config.influxdb.api == "v1":
        agreed = [theirs for event, mine, theirs in zip(EVENTS, our_lines(config),
                                                        answer["lines"])
                  if theirs and mine == theirs and _json_text(event)]   # not HA's value=inf
        assert_same_points_in_influxdb(tmp_path, influxdb, config, ours_path, agreed,
                                       {**env, **variables})


def assert_same_points_in_influxdb(tmp_path, influxdb, config, config_path, ha_lines, env):
    """HA's lines into database ha_reference; the events through `ha-ingestor write` into the
    imported config's database: the same series, times and fields."""
    influxdb.create_database(config.influxdb.database)
    influxdb.create_database("ha_reference")
    influxdb.write("ha_reference", "\n".join(ha_lines))
    producer = Producer(tmp_path / "queue", "ha", max_bytes=2**30)
    producer.append([ha_event(e) for e in EVENTS if _json_text(e)])
    producer.close()
    writer = subprocess.Popen(CLI + ["--config", str(config_path), "write"], env={
        **{k: v for k, v in os.environ.items() if not k.startswith("HA_INGESTOR_")},
        **env, "HA_INGESTOR_METRICS__ENABLED": "false",
        "HA_INGESTOR_QUEUE__DIR": str(tmp_path / "queue")},
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "writer.log", "w"))
    try:
        expected = influxdb.series_counts("ha_reference")
        wait_until(lambda: influxdb.series_counts(config.influxdb.database) == expected, 60,
                   "the writer's points")
    finally:
        writer.terminate()
        writer.wait(30)
    for measurement, _tags in expected:
        query = f'SELECT * FROM "{measurement}" GROUP BY *'
        assert influxdb.query(query, config.influxdb.database) == \
            influxdb.query(query, "ha_reference"), measurement


def _json_text(event: dict) -> bool:
    """Events HA's WebSocket can carry: JSON text has no NaN or infinity (HA sends null)."""
    try:
        json.dumps(event, allow_nan=False)
        return True
    except ValueError:
        return False


def test_secrets_can_be_printed_as_files(tmp_path):
    files, _ = config_v2_secret(8086)
    text = import_ha(write_tree(tmp_path, files), {}, files=True)
    assert "token_file: /run/secrets/influx_token" in text
    assert "v2-token-secret" not in text


def test_what_has_no_equivalent_is_listed(tmp_path):
    path = write_tree(tmp_path, {"configuration.yaml": "influxdb:\n  max_retries: 5\n"
                                                       "  precision: s\n  bucket: unused\n"
                                                       "  verify_ssl: false\n"})
    text = import_ha(path, {})
    header = text.split("\n\n")[0]
    assert "# No equivalent in HA Ingestor:" in header
    assert "influxdb.max_retries (5): HA Ingestor never gives up on a write" in header
    assert "influxdb.precision (s): HA Ingestor writes nanosecond timestamps" in header
    assert "influxdb.bucket is not used with api_version 1" in header
    assert "influxdb.verify_ssl is left out: the URL is http://" in header


@pytest.mark.parametrize("block, message", [
    ("influxdb:\n  hots: x\n", "influxdb.hots is not an option of Home Assistant's influxdb"),
    ("influxdb:\n  token: t\n  organization: o\n", "token and bucket are only allowed when"),
    ("influxdb:\n  api_version: 3\n", "influxdb.api_version: value must be one of 1, 2"),
    ("influxdb:\n  username: u\n", "username and password must be given together"),
    ("influxdb:\n  password: !secret nope\n", "secret 'nope' is not defined"),
    ("influxdb:\n  include: {entities: [not an id]}\n", "is an invalid entity ID"),
    ("influxdb:\n", "influxdb: is empty"),
    ("recorder:\n", "has no influxdb: block"),
])
def test_what_home_assistant_refuses_is_refused_and_named(tmp_path, block, message):
    path = write_tree(tmp_path, {"configuration.yaml": block, "secrets.yaml": "x: y\n"})
    done = run_cli("config", "import-ha", str(path))
    assert done.returncode == 2, done.stdout
    assert message in done.stderr


# ---- generated blocks --------------------------------------------------------------------------

class Tagged:
    """A value written as ``!secret name`` or ``!env_var NAME default`` in the YAML."""

    def __init__(self, tag: str, name: str, value):
        self.tag, self.name, self.value = tag, name, value


class Dumper(yaml.SafeDumper):
    pass


Dumper.add_representer(Tagged, lambda d, v: d.represent_scalar(v.tag, v.name))
ENTITY_IDS = ["sensor.temp", "Sensor.Temp", "switch.plug", "person.me", "sun.sun",
              "counter.acc_counter", "binary_sensor.door", "cover.blind", "sensor.weird"]
DOMAINS = ["sensor", "switch", "person", "binary_sensor", "input_number", "automation"]
GLOBS = ["sensor.t*", "*.acc_*", "switch.*", "sensor.?emp"]
NAMES = st.sampled_from(["alpha", "Beta", "x1", "floor", "1", "room"])
WORDS = st.one_of(st.sampled_from(["prod", "ha", "10", "True", "a b", "kWh"]), st.integers(-5, 5),
                  st.booleans(), st.just(2.5))


def one_or_list(values):
    return st.one_of(st.sampled_from(values), st.lists(st.sampled_from(values), max_size=3))


def entity_filter():
    return st.fixed_dictionaries({}, optional={
        "domains": one_or_list(DOMAINS), "entity_globs": one_or_list(GLOBS),
        "entities": st.one_of(st.lists(st.sampled_from(ENTITY_IDS), max_size=3),
                              st.lists(st.sampled_from(ENTITY_IDS), min_size=1,
                                       max_size=3).map(", ".join))})


def customize(keys):
    entry = st.fixed_dictionaries({}, optional={
        "override_measurement": st.sampled_from(["m1", "", "glob m"]),
        "ignore_attributes": one_or_list(["friendly_name", "a", "icon"])})
    return st.dictionaries(st.sampled_from(keys), entry, max_size=2)


SCHEMA_OPTIONS = st.fixed_dictionaries({}, optional={
    "include": entity_filter(), "exclude": entity_filter(),
    "measurement_attr": st.sampled_from(["unit_of_measurement", "domain__device_class",
                                         "entity_id"]),
    "default_measurement": st.sampled_from(["state", "events"]),
    "override_measurement": st.sampled_from(["everything", ""]),
    "tags": st.dictionaries(NAMES, WORDS, max_size=3),
    "tags_attributes": one_or_list(["friendly_name", "t_int", "device_class"]),
    "ignore_attributes": one_or_list(["icon", "mode", "friendly_name"]),
    "component_config": customize(ENTITY_IDS),
    "component_config_domain": customize(DOMAINS),
    "component_config_glob": customize(GLOBS)})


@st.composite
def connection(draw):
    version = draw(st.sampled_from([None, 1, "1", 2, "2"]))
    secret = draw(st.booleans())
    block = {"host": draw(st.sampled_from(["127.0.0.1", "influx.local", "localhost"]))}
    if version is not None:
        block["api_version"] = version
    if draw(st.booleans()):
        block["port"] = draw(st.sampled_from([8086, "8087", 443]))
    if draw(st.booleans()):
        block["ssl"] = draw(st.sampled_from([True, False, "yes", "off", 1]))
    if draw(st.booleans()):
        block["path"] = draw(st.sampled_from(["/influx", "influx", ""]))
    if draw(st.booleans()):
        block["verify_ssl"] = draw(st.sampled_from([False, "no", True]))
    credential = Tagged("!secret", "influx_credential", "cred-secret-value") if secret \
        else "inline-credential-value"
    if str(version) == "2":
        block.update(token=credential, organization=draw(st.sampled_from(["home", 7])))
        if draw(st.booleans()):
            block["bucket"] = Tagged("!env_var", "BUCKET", "b1") if secret else "bucket one"
    else:
        if draw(st.booleans()):
            block.update(username=draw(st.sampled_from(["ha", 42])), password=credential)
        if draw(st.booleans()):
            block["database"] = Tagged("!env_var", "INFLUX_DATABASE metrics", "metrics")
    return block


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(block=connection(), schema=SCHEMA_OPTIONS, layout=st.sampled_from(["inline", "include",
                                                                          "package"]))
def test_any_home_assistant_block_imports_to_the_same_points(reference, block, schema, layout):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        files = generated_tree(block, schema, layout)
        path = write_tree(root, files)
        env = {"BUCKET": "b1"}
        answer = reference.ask(root, EVENTS, env=env)
        assert "error" not in answer, answer
        text = import_ha(path, env)
        assert "cred-secret-value" not in text and "inline-credential-value" not in text
        secrets = {"influx_credential": "cred-secret-value", "inline": "inline-credential-value"}
        variables = variables_for(text, secrets)
        config = load_config(None, env={**env, **variables}, text=text)
        assert_same_connection(config, answer["client"])
        assert_same_lines(our_lines(config), answer["lines"])


def generated_tree(block: dict, schema: dict, layout: str) -> dict[str, str]:
    files = {"secrets.yaml": "influx_credential: cred-secret-value\n"}
    if layout == "inline":
        files["configuration.yaml"] = yaml.dump({"influxdb": {**block, **schema}}, Dumper=Dumper)
    elif layout == "include":
        files["configuration.yaml"] = "influxdb: !include influx/influxdb.yaml\n"
        files["influx/influxdb.yaml"] = yaml.dump({**block, **schema}, Dumper=Dumper) \
            if (block or schema) else "{}\n"
    else:
        files["configuration.yaml"] = ("homeassistant:\n  packages: !include_dir_merge_named "
                                       "pkgs\n" + yaml.dump({"influxdb": block}, Dumper=Dumper))
        files["pkgs/influx.yaml"] = yaml.dump({"influx_schema": {"influxdb": schema}},
                                              Dumper=Dumper)
    return files
