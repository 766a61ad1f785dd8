"""scripts/install-system-deps.sh installs packages and never stops, starts, enables or disables a
system service (the README's first command must not stop the broker or InfluxDB Home Assistant
uses on the same host).

The script runs as it is, with stand-ins first on PATH for the commands that would change this
machine: ``dpkg-query`` (reports packages as missing, so the install path runs), ``apt-get`` (records
what it was asked to install) and every way of touching a service (``systemctl``, ``service``,
``invoke-rc.d``, ``deb-systemd-invoke``), which record the call and fail. The install inside a
fresh Debian container, with real apt and the same stand-in ``systemctl``, is in
tests/test_images.py.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "install-system-deps.sh"
SERVICE_TOOLS = ("systemctl", "service", "invoke-rc.d", "deb-systemd-invoke")
BASE_PACKAGES = {"mosquitto", "mosquitto-clients", "influxdb", "victoria-metrics", "nats-server",
                 "openssl", "python3-venv"}
IMAGE_PACKAGES = {"podman", "runc", "debootstrap"}


def stand_in(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def run_script(tmp_path: Path, *args: str, missing: bool = True,
               as_root: bool = True) -> tuple[subprocess.CompletedProcess, Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "calls.log"
    record = f'echo "$(basename "$0") $*" >> "{calls}"\n'
    for tool in SERVICE_TOOLS:
        stand_in(bin_dir, tool, record + "exit 1\n")
    stand_in(bin_dir, "apt-get", record + "exit 0\n")
    stand_in(bin_dir, "sudo", record + 'exec "$@"\n')
    stand_in(bin_dir, "id", f'echo {0 if as_root else 1000}\n')
    status = "not-installed" if missing else "installed"
    stand_in(bin_dir, "dpkg-query", f'printf %s "{status}"\n')
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                            env=env, timeout=60)
    return result, calls


def recorded(calls: Path) -> list[list[str]]:
    return [line.split() for line in calls.read_text().splitlines()] if calls.exists() else []


@pytest.mark.parametrize("args, expected", [((), BASE_PACKAGES),
                                            (("--images",), BASE_PACKAGES | IMAGE_PACKAGES)])
def test_missing_packages_are_installed_and_no_service_is_touched(tmp_path, args, expected):
    result, calls = run_script(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    lines = recorded(calls)
    assert not [line for line in lines if line[0] in SERVICE_TOOLS], lines
    apt = [line[1:] for line in lines if line[0] == "apt-get"]
    assert apt[0] == ["update", "-qq"]
    install = apt[1]
    assert install[:4] == ["install", "-y", "-qq", "--no-install-recommends"]
    assert set(install[4:]) == expected


def test_without_root_it_installs_through_sudo(tmp_path):
    result, calls = run_script(tmp_path, as_root=False)
    assert result.returncode == 0, result.stderr
    lines = recorded(calls)
    assert [line[0] for line in lines] == ["sudo", "apt-get", "sudo", "apt-get"]
    assert not [line for line in lines if line[0] in SERVICE_TOOLS]


def test_nothing_happens_when_everything_is_installed(tmp_path):
    result, calls = run_script(tmp_path, "--images", missing=False)
    assert result.returncode == 0, result.stderr
    assert recorded(calls) == [] and result.stdout == ""


def test_an_unknown_option_is_a_usage_error(tmp_path):
    result, calls = run_script(tmp_path, "--everything")
    assert result.returncode == 2
    assert "unknown option: --everything" in result.stderr
    assert recorded(calls) == []
