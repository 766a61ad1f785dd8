"""The virtual environments real Home Assistant releases run in for the tests and the demo.

Each tested release has its own Python, its own pins and its own cached venv
(``$HA_INGESTOR_HA_CACHE``, default ``~/.cache/ha-ingestor``, folder ``ha-<version>``):

    from tests.support.ha_venv import HA_VERSIONS, ensure_ha_venv
    venv = ensure_ha_venv(("influxdb",), version="2025.4.4")   # installs on first use

``ensure_ha_venv`` installs ``homeassistant==<version>`` with the release's pins, then the packages
HA would otherwise pip-install on its first start (frontend, SQLAlchemy, and the requirements of
the integrations a config names), so that HA starts without a package index. A lock file per
venv keeps parallel callers (pytest workers, another checkout) from installing at the same time.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HARelease:
    """One tested Home Assistant release: the Python it needs and what must be pinned beside it."""

    version: str
    python: str                  # "3.11": the minor version HA's Requires-Python admits here
    pins: tuple[str, ...] = ()   # "name==version", installed with HA and kept on every install
    why: str = ""                # why each pin is there (shown in the docs and failures)


# The releases the suite runs on, oldest first. 2024.3.3 is the last release for Python 3.11;
# 2025.4.4 the last that installs on Python 3.13.0 (2025.5 needs a newer 3.13 patch release).
RELEASES = {
    "2024.3.3": HARelease("2024.3.3", "3.11", ("josepy==1.14.0",),
                          "josepy 2.x removed ComparableX509, which acme (via hass_nabucasa) "
                          "imports: every HTTP answer becomes a 500"),
    "2025.4.4": HARelease("2025.4.4", "3.13"),
}
HA_VERSIONS = tuple(RELEASES)
DEFAULT_HA_VERSION = "2024.3.3"
READY_MARKER = ".ha-ingestor-venv.json"   # what made the venv (see _recipe)

# Integrations whose requirements are installed with the venv: those the test config uses, plus
# those other tests add through extra_yaml (HA's own influxdb integration, MQTT statestream).
PREINSTALLED_DOMAINS = ("http", "api", "websocket_api", "config", "recorder", "history",
                        "template", "influxdb", "mqtt", "mqtt_statestream", "manual")

# Run inside HA's own interpreter: the requirements of the integrations HA will set up for the
# given domains (plus HA's always-loaded ones), closed over manifest dependencies and
# after_dependencies (HA's requirements.py installs both), and of HA's auth modules, that are not
# installed yet. An MQTT config entry also sets up every entity platform MQTT discovery can create
# (camera, image, ...): theirs too, or HA tries to install them when the entry is created
# (``PLATFORMS`` in 2024.3.3, ``ENTITY_PLATFORMS`` in 2025.4.4).
_MISSING_REQUIREMENTS_SCRIPT = r"""
import json, sys, pathlib
import homeassistant, homeassistant.bootstrap as bootstrap
from homeassistant.util.package import is_installed
components = pathlib.Path(homeassistant.__file__).parent / "components"
todo = set(json.loads(sys.argv[1])) | bootstrap.CORE_INTEGRATIONS | bootstrap.DEFAULT_INTEGRATIONS
seen, reqs = set(), []
while todo:
    domain = todo.pop()
    manifest = components / domain / "manifest.json"
    if domain in seen or not manifest.exists():
        continue
    seen.add(domain)
    if domain == "mqtt":   # an MQTT config entry sets up every platform discovery can create
        import homeassistant.components.mqtt.const as mqtt_const
        platforms = getattr(mqtt_const, "ENTITY_PLATFORMS", None) or mqtt_const.PLATFORMS
        todo.update(str(platform) for platform in platforms)
    data = json.loads(manifest.read_text())
    todo.update(data.get("dependencies", []))
    todo.update(data.get("after_dependencies", []))
    reqs.extend(r for r in data.get("requirements", []) if r not in reqs)
# HA's auth loads its multi-factor modules on every start (totp by default) and installs their
# REQUIREMENTS then: pyotp, PyQRCode.
for module in sorted((pathlib.Path(homeassistant.__file__).parent / "auth").glob("*/*.py")):
    for line in module.read_text().splitlines():
        if line.startswith("REQUIREMENTS = "):
            reqs.extend(r for r in json.loads(line.split("=", 1)[1]) if r not in reqs)
print(json.dumps(sorted(r for r in reqs if not is_installed(r))))
"""

# What HA's own package installer (pip in 2024.3, uv in 2025) sees in its environment: no index,
# so a requirement the venv lacks fails at once with its name in HA's log, never a download.
OFFLINE_ENV = {"PIP_NO_INDEX": "1", "UV_OFFLINE": "1"}


class HAInstallError(RuntimeError):
    """A Home Assistant venv could not be created; the message says which step and why."""


def release(version: str) -> HARelease:
    try:
        return RELEASES[version]
    except KeyError:
        raise HAInstallError(f"Home Assistant {version} is not a tested release "
                             f"({', '.join(HA_VERSIONS)})") from None


def ha_venv_dir(version: str = DEFAULT_HA_VERSION) -> Path:
    cache = os.environ.get("HA_INGESTOR_HA_CACHE")
    root = Path(cache) if cache else Path.home() / ".cache" / "ha-ingestor"
    return root / f"ha-{release(version).version}"


def ensure_ha_venv(extra_domains: tuple[str, ...] = (),
                   version: str = DEFAULT_HA_VERSION) -> Path:
    """The venv of ``version``, created (with HA's first-start packages) if missing."""
    rel = release(version)
    venv = ha_venv_dir(version)
    domains = tuple(sorted(set(PREINSTALLED_DOMAINS) | set(extra_domains)))
    marker = venv / READY_MARKER
    if _marker_covers(marker, rel, domains):
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(venv.parent / f"{venv.name}.lock"):
        if _marker_covers(marker, rel, domains):
            return venv
        if not _has_release(venv, rel):
            _create_venv(venv, rel)
        _install_missing_requirements(venv, rel, domains)
        marker.write_text(json.dumps({"recipe": _recipe(rel), "domains": list(domains)}))
    return venv


def find_python(minor: str) -> str | None:
    """A CPython ``minor`` (``"3.13"``) interpreter: ``$HA_INGESTOR_PYTHON_3_13``, this one,
    ``python3.13`` on PATH, or pyenv's newest ``3.13.*``; None if there is none."""
    explicit = os.environ.get(f"HA_INGESTOR_PYTHON_{minor.replace('.', '_')}")
    if explicit:
        return explicit
    candidates = [shutil.which(f"python{minor}")]
    if "%d.%d" % sys.version_info[:2] == minor:
        candidates.insert(0, getattr(sys, "_base_executable", None) or sys.executable)
    roots = [os.environ.get("PYENV_ROOT"), str(Path.home() / ".pyenv")]
    for root in filter(None, roots):
        found = glob.glob(f"{root}/versions/{minor}.*/bin/python{minor}")
        candidates += sorted(found, key=_patch_level, reverse=True)
    return next((c for c in candidates if c and _python_minor(c) == minor), None)


def _patch_level(path: str) -> int:
    version = Path(path).parent.parent.name.split(".")
    return int(version[2]) if len(version) > 2 and version[2].isdigit() else -1


def _python_minor(python: str) -> str | None:
    """The interpreter's ``major.minor``; None when it does not run (a pyenv shim whose version
    is not selected exits non-zero)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                              capture_output=True, text=True, timeout=30)
        if done.returncode == 0:
            return done.stdout.strip()
    return None


def _marker_covers(marker: Path, rel: HARelease, domains: tuple[str, ...]) -> bool:
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return data.get("recipe") == _recipe(rel) and set(domains) <= set(data.get("domains", ()))


def _recipe(rel: HARelease) -> str:
    """What the venv was made by: the release, its pins and the requirements script (a change to
    any of them completes the venv again on next use)."""
    text = json.dumps([rel.version, rel.python, rel.pins, _MISSING_REQUIREMENTS_SCRIPT])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextlib.contextmanager
def file_lock(path: Path):
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _installed(venv: Path, names: list[str]) -> list[str] | None:
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    probe = ("import importlib.metadata as m, sys; "
             "print(' '.join(m.version(n) for n in sys.argv[1:]))")
    result = subprocess.run([str(python), "-c", probe, *names], capture_output=True, text=True)
    return result.stdout.split() if result.returncode == 0 else None


def _has_release(venv: Path, rel: HARelease) -> bool:
    names = ["homeassistant"] + [pin.split("==")[0] for pin in rel.pins]
    wanted = [rel.version] + [pin.split("==")[1] for pin in rel.pins]
    return _installed(venv, names) == wanted


def _create_venv(venv: Path, rel: HARelease) -> None:
    python = find_python(rel.python)
    if python is None:
        raise HAInstallError(
            f"Home Assistant {rel.version} needs Python {rel.python}, and none was found "
            f"(set HA_INGESTOR_PYTHON_{rel.python.replace('.', '_')}, put python{rel.python} on "
            f"PATH, or install it with pyenv)")
    _run([python, "-m", "venv", "--clear", str(venv)], f"creating the HA {rel.version} venv")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
           "--disable-pip-version-check"]
    _run(pip + ["--upgrade", "pip", "wheel"], "upgrading pip in the HA venv")
    _run(pip + [f"homeassistant=={rel.version}", *rel.pins],
         f"installing homeassistant=={rel.version}")


def _install_missing_requirements(venv: Path, rel: HARelease, domains: tuple[str, ...]) -> None:
    python = str(venv / "bin" / "python")
    result = _run([python, "-c", _MISSING_REQUIREMENTS_SCRIPT, json.dumps(list(domains))],
                  "listing HA integration requirements")
    missing = json.loads(result.stdout.strip().splitlines()[-1])
    if not missing:
        return
    constraints = _run([python, "-c", "import homeassistant, pathlib; print(pathlib.Path("
                        "homeassistant.__file__).parent / 'package_constraints.txt')"],
                       "locating HA's package constraints").stdout.strip()
    _run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
          "--constraint", constraints, *missing, *rel.pins],
         f"installing HA integration requirements {missing}")


def _run(argv: list[str], what: str) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise HAInstallError(f"{what} failed (exit {result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.support.ha_venv [VERSION ...]``: install the venvs now (all by default),
    printing how long each took (the tests install them on first use otherwise)."""
    import argparse
    import time
    parser = argparse.ArgumentParser(
        description="Install the Home Assistant venvs the tests and the demo use.")
    parser.add_argument("versions", nargs="*", metavar="VERSION",
                        help=f"one of {', '.join(HA_VERSIONS)} (default: all)")
    for version in parser.parse_args(argv).versions or HA_VERSIONS:
        began = time.monotonic()
        try:
            venv = ensure_ha_venv(version=version)
        except HAInstallError as exc:
            print(f"Home Assistant {version}: {exc}", file=sys.stderr)
            return 1
        print(f"Home Assistant {version}: {venv} ({time.monotonic() - began:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
