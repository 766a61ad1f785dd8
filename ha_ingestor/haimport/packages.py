"""Home Assistant packages (``homeassistant: packages:``), merged into the top-level
``influxdb:`` block as HA's ``config.merge_packages_config`` merges a dict-based integration:
mappings merge key by key, lists are joined (falsy items dropped), and a scalar already set
elsewhere stops that package's merge at that key (HA logs "has duplicate key" and keeps what it
had merged so far). An invalid package definition is skipped, as HA skips it.
"""

from __future__ import annotations

import re
from typing import Any

from ha_ingestor.haimport.haschema import DOMAIN

_SLUG = re.compile(r"^[a-z0-9_]+$")


def merge_influxdb(config: dict) -> list[str]:
    """Merge every package's ``influxdb:`` into ``config``; returns HA's complaints, if any."""
    core = config.get("homeassistant")
    packages = core.get("packages") if isinstance(core, dict) else None
    notes: list[str] = []
    if not packages:
        return notes
    if not isinstance(packages, dict):
        return [f"homeassistant.packages is not a mapping of packages: Home Assistant ignores "
                f"it"]
    for name, package in packages.items():
        if not _valid_package(name, package):
            notes.append(f"package {name!r} is not a valid package definition: Home Assistant "
                         f"skips it")
            continue
        if DOMAIN in package:
            notes += _merge_one(config, str(name), package[DOMAIN])
    return notes


def _valid_package(name: Any, package: Any) -> bool:
    return (isinstance(name, str) and _SLUG.match(name) is not None
            and isinstance(package, dict)
            and all(isinstance(v, (dict, list)) or v is None for v in package.values()))


def _merge_one(config: dict, name: str, block: Any) -> list[str]:
    if block is None:
        block = {}
    if not isinstance(block, dict):
        return [f"package {name!r}: influxdb cannot be merged, expected a dict (Home Assistant "
                f"skips it)"]
    if config.get(DOMAIN) is None:
        config[DOMAIN] = {}
    if not isinstance(config[DOMAIN], dict):
        return [f"package {name!r}: influxdb cannot be merged, dict expected in the main "
                f"config (Home Assistant skips it)"]
    duplicate = _recursive_merge(config[DOMAIN], block)
    if duplicate:
        return [f"package {name!r}: influxdb has duplicate key {duplicate!r}; Home Assistant "
                f"keeps the value it had and merges nothing more from this package"]
    return []


def _recursive_merge(conf: dict, package: dict) -> str | None:
    duplicate: str | None = None
    for key, value in package.items():
        if isinstance(value, dict):
            if not value:
                continue
            conf[key] = conf.get(key) if isinstance(conf.get(key), dict) else {}
            duplicate = _recursive_merge(conf[key], value)
        elif isinstance(value, list):
            conf[key] = [item for item in _as_list(conf.get(key)) + value if item]
        else:
            if conf.get(key) is not None:
                return key
            conf[key] = value
    return duplicate


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]
