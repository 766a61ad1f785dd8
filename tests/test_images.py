"""The product image (deploy/Dockerfile) and the add-on image (deploy/homeassistant-addon/
ha-ingestor/Dockerfile), built with podman and started against the test Mosquitto, InfluxDB 1.6.7
and a real Home Assistant 2024.3.3: events land in InfluxDB.

No registry is reachable here, so both build on a base image made from Debian's packages
(tests/support/images.py); users build them on python:3.11-slim-bookworm and Home Assistant's
base-python image. Needs root, podman, runc and debootstrap (scripts/install-system-deps.sh
--images, which .ci/run runs): a missing one fails under CI=true and skips elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ha_ingestor.config.model import METRICS_PORTS
from tests.support import images
from tests.support.pipeline_check import DB, expect_events_land
from tests.support.procs import free_port, in_ci, wait_until
from tests.support.supervisor_standin import SupervisorStandIn

pytestmark = [pytest.mark.realha, pytest.mark.images]

ROOT = Path(__file__).resolve().parents[1]
ADDON = ROOT / "deploy" / "homeassistant-addon" / "ha-ingestor"
PRODUCT_TAG = "localhost/ha-ingestor:test"
ADDON_TAG = "localhost/ha-ingestor-addon:test"
ADDON_TOKEN = "fedcba9876543210fedcba9876543210"


def require_image_tools() -> None:
    missing = [tool for tool in ("podman", "runc", "debootstrap") if not shutil.which(tool)]
    problem = (f"{', '.join(missing)} not installed (scripts/install-system-deps.sh --images)"
               if missing else None if os.geteuid() == 0 else "building images needs root")
    if problem:
        if in_ci():
            pytest.fail(problem, pytrace=False)
        pytest.skip(problem)


@pytest.fixture(scope="module")
def base_image():
    require_image_tools()
    return images.ensure_base_image()


@pytest.fixture(scope="module")
def product_image(base_image):
    return images.build(ROOT / "deploy" / "Dockerfile", ROOT, PRODUCT_TAG,
                        {"BASE_IMAGE": base_image})


@pytest.fixture(scope="module")
def addon_image(base_image, tmp_path_factory):
    """The add-on folder as the Supervisor gets it, with the wheel `make addon` puts there."""
    context = tmp_path_factory.mktemp("addon") / "ha-ingestor"
    shutil.copytree(ADDON, context)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--wheel-dir", str(context / "wheels"), str(ROOT)], check=True, timeout=300)
    return images.build(context / "Dockerfile", context, ADDON_TAG, {"BUILD_FROM": base_image})


@pytest.fixture
def containers():
    started: list[images.Container] = []

    def start(*args, **kwargs) -> images.Container:
        container = images.Container(*args, **kwargs)
        started.append(container)
        return container
    yield start
    for container in started:
        container.remove()


def loopback_metrics() -> dict[str, str]:
    env = {"HA_INGESTOR_METRICS__HOST": "127.0.0.1"}
    env.update({f"HA_INGESTOR_METRICS__PORTS__{name.upper()}": str(free_port())
                for name in METRICS_PORTS})
    return env


def writable_by_container(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, 10001, 10001)
    path.chmod(0o700)
    return path


@pytest.mark.timeout(900)
def test_the_product_image_runs_the_pipeline(product_image, containers, tmp_path, real_ha,
                                             mosquitto, influxdb):
    influxdb.create_database(DB)
    queue = writable_by_container(tmp_path / "queue")
    metrics = loopback_metrics()
    container = containers(product_image, f"ha-ingestor-test-{os.getpid()}", ["run"], env={
        "HA_INGESTOR_MQTT__HOST": "127.0.0.1", "HA_INGESTOR_MQTT__PORT": str(mosquitto.port),
        "HA_INGESTOR_HOMEASSISTANT__URL": real_ha.ws_url, "HA_TOKEN": real_ha.token,
        "HA_INGESTOR_INFLUXDB__URL": influxdb.url, **metrics},
        volumes={str(queue): "/var/lib/ha-ingestor/queue"})
    wait_until(lambda: (queue / "ha.db").exists() and "subscribed to" in container.logs()
               or not container.running(), 90, "the collectors in the container", interval=0.5)
    assert container.running(), container.logs()
    expect_events_land(real_ha, mosquitto.port, influxdb, container.logs, "image-test/")
    assert container.stop() == 0, container.logs()
    assert "connected to Home Assistant" in container.logs()
    assert real_ha.token not in container.logs()


@pytest.mark.timeout(900)
def test_the_addon_image_runs_the_pipeline_through_the_supervisor(addon_image, containers,
                                                                  tmp_path, real_ha,
                                                                  mosquitto_factory, influxdb):
    broker = mosquitto_factory(users={"addons": "Oog5ohth0aeY"})
    influxdb.create_database(DB)
    standin = SupervisorStandIn(ha_url=real_ha.url, ha_token=real_ha.token,
                                addon_token=ADDON_TOKEN,
                                mqtt={"host": "127.0.0.1", "port": broker.port,
                                      "username": "addons", "password": "Oog5ohth0aeY"}).start()
    try:
        import yaml
        options = yaml.safe_load((ADDON / "config.yaml").read_text())["options"]
        options["influxdb"] = {"api": "v1", "url": influxdb.url, "database": DB}
        data = tmp_path / "data"
        data.mkdir()
        (data / "options.json").write_text(json.dumps(options))
        container = containers(addon_image, f"ha-ingestor-addon-test-{os.getpid()}", env={
            "SUPERVISOR_TOKEN": ADDON_TOKEN, "SUPERVISOR_URL": standin.url, **loopback_metrics()},
            volumes={str(data): "/data"})
        wait_until(lambda: standin.seen.ws_sessions >= 1 and "subscribed to" in container.logs()
                   or not container.running(), 90,
                   "the add-on's collectors (HA through the stand-in, MQTT subscribed)", interval=0.5)
        assert container.running(), container.logs()
        expect_events_land(real_ha, broker.port, influxdb, container.logs, "addon-image-test/",
                           username="addons", password="Oog5ohth0aeY")
        assert container.stop() == 0, container.logs()
    finally:
        standin.stop()
    assert "(the Supervisor's MQTT service)" in container.logs()
    assert ADDON_TOKEN not in container.logs() and "Oog5ohth0aeY" not in container.logs()


SYSTEMD_CHECK = """
set -eu
mkdir -p /usr/local/sbin
printf '#!/bin/sh\\necho "$*" >> /tmp/systemctl.calls\\n' > /usr/local/sbin/systemctl
chmod +x /usr/local/sbin/systemctl
cp -r /src /tmp/checkout && cd /tmp/checkout
{steps}
runuser -u ha-ingestor -- env $(cat /etc/default/ha-ingestor) \\
    /opt/ha-ingestor/bin/ha-ingestor --config /etc/ha-ingestor/ha-ingestor.yaml config check
stat -c '%a %U:%G %n' /etc/ha-ingestor/ha-ingestor.yaml /etc/default/ha-ingestor \\
    /etc/systemd/system/ha-ingestor.service
cat /tmp/systemctl.calls
"""


@pytest.mark.timeout(900)
def test_the_systemd_install_steps_work_when_pasted(base_image, tmp_path):
    """The shell block under "### systemd" in docs/operations.md, pasted as it is into a fresh
    Debian (systemd itself does not run in a container: a stand-in systemctl records the calls),
    leaves a config that `config check` accepts as the service user, with HA_TOKEN from the
    environment file."""
    text = (ROOT / "docs" / "operations.md").read_text()
    steps = re.search(r"^### systemd\n.*?^```sh\n(.*?)^```", text, re.M | re.S).group(1)
    assert "install -D" in steps and "/etc/default/ha-ingestor" in steps
    steps = steps.replace("<a long-lived access token of an HA admin>", "test-token")
    script = tmp_path / "check.sh"
    script.write_text(SYSTEMD_CHECK.format(steps=steps))
    result = images.run_once(base_image, ["sh", "/check/check.sh"],
                             volumes={str(ROOT): "/src:ro", str(tmp_path): "/check:ro"})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "config OK: /etc/ha-ingestor/ha-ingestor.yaml" in output
    assert "640 root:ha-ingestor /etc/ha-ingestor/ha-ingestor.yaml" in output
    assert "600 root:root /etc/default/ha-ingestor" in output
    assert "daemon-reload\nenable --now ha-ingestor" in output
