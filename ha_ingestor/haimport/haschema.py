"""The options of Home Assistant's ``influxdb:`` block, validated and coerced the way HA's own
schema does (``homeassistant/components/influxdb/__init__.py`` and ``const.py``, with the
validators of ``helpers/config_validation.py``, in every tested release):

- ``cv.string`` turns numbers and booleans into text (``True`` → ``"True"``), refuses null,
  lists and mappings; ``cv.boolean`` takes ``yes``/``on``/``enable``/``1`` and their opposites;
  ``cv.port`` is ``int()`` in 1..65535; ``api_version`` is ``str()`` of the value, ``"1"`` or
  ``"2"``; lists take one item without brackets; entity ids may be one comma-separated string
  and are lowered;
- ``username``/``password`` and ``token``/``organization`` come in pairs; ``token`` only with
  ``api_version: 2``, ``username`` only with 1;
- the defaults: api_version 1, database ``home_assistant``, bucket ``Home Assistant``,
  verify_ssl true, measurement_attr ``unit_of_measurement``; with api_version 2, ssl true and
  host ``us-west-2-1.aws.cloud2.influxdata.com`` unless given.

A value that came from ``!secret``/``!env_var`` keeps its ``Ref`` through coercion where it stays
one value, so the import can print a reference instead.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable

from ha_ingestor.errors import ConfigError
from ha_ingestor.haimport.hayaml import Ref

DOMAIN = "influxdb"
DEFAULT_HOST_V2 = "us-west-2-1.aws.cloud2.influxdata.com"
MEASUREMENT_ATTRS = ("unit_of_measurement", "domain__device_class", "entity_id")
PRECISIONS = ("ms", "s", "us", "ns")
FILTER_KEYS = ("domains", "entity_globs", "entities")
_ENTITY_ID = re.compile(r"^(?!.+__)(?!_)[\da-z_]+(?<!_)\.(?!_)[\da-z_]+(?<!_)$")


def _fail(key: str, why: str) -> ConfigError:
    return ConfigError(f"{DOMAIN}.{key}: {why} (Home Assistant refuses this too)")


def _keep_ref(coerce: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    """Apply ``coerce`` to a Ref's value and keep the Ref around the result."""
    def wrapped(key: str, value: Any) -> Any:
        if isinstance(value, Ref):
            return Ref(value.kind, value.name, coerce(key, value.value), value.default)
        return coerce(key, value)
    return wrapped


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Ref) else value


@_keep_ref
def string(key: str, value: Any) -> str:
    if value is None:
        raise _fail(key, "string value is None")
    if isinstance(value, (list, dict)):
        raise _fail(key, "value should be a string")
    return value if isinstance(value, str) else str(value)


def boolean(key: str, value: Any) -> bool:
    value = _plain(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.lower().strip()
        if text in ("1", "true", "yes", "on", "enable"):
            return True
        if text in ("0", "false", "no", "off", "disable"):
            return False
    elif isinstance(value, (int, float)):
        return value != 0
    raise _fail(key, f"invalid boolean value {value}")


def _int(key: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise _fail(key, f"expected int, got {value!r}") from None
    if number < minimum or (maximum is not None and number > maximum):
        raise _fail(key, f"value must be in {minimum}..{maximum or ''}")
    return number


port = _keep_ref(lambda key, value: _int(key, value, 1, 65535))


def positive_int(key: str, value: Any) -> int:
    return _int(key, _plain(value), 0)


def one_of(choices: tuple[str, ...]) -> Callable[[str, Any], str]:
    def check(key: str, value: Any) -> str:
        if _plain(value) not in choices:
            raise _fail(key, f"value must be one of {', '.join(choices)}")
        return _plain(value)
    return check


def api_version(key: str, value: Any) -> str:
    text = str(_plain(value))
    if text not in ("1", "2"):
        raise _fail(key, f"value must be one of 1, 2 (got {text!r})")
    return text


def string_list(key: str, value: Any) -> list:
    items = value if isinstance(_plain(value), list) else ([] if value is None else [value])
    return [string(f"{key}[{i}]", item) for i, item in enumerate(_plain(items))]


def entity_id(key: str, value: Any) -> str:
    text = str(_plain(string(key, value))).lower()
    if not _ENTITY_ID.match(text):
        raise _fail(key, f"Entity ID {_plain(value)} is an invalid entity ID")
    return text


def entity_ids(key: str, value: Any) -> list[str]:
    value = _plain(value)
    if value is None:
        raise _fail(key, "Entity IDs cannot be None")
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    return [entity_id(f"{key}[{i}]", item) for i, item in enumerate(value)]


def isfile(key: str, value: Any) -> str:
    path = os.path.expanduser(str(_plain(value)))
    if not os.path.isfile(path):
        raise _fail(key, f"not a file: {path}")
    return path


def mapping(key: str, value: Any) -> dict:
    value = _plain(value)
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise _fail(key, "expected a dictionary")
    return value


def entity_filter(key: str, value: Any) -> dict:
    raw = mapping(key, value)
    _no_extra(key, raw, FILTER_KEYS)
    return {"domains": string_list(f"{key}.domains", raw.get("domains", [])),
            "entity_globs": string_list(f"{key}.entity_globs", raw.get("entity_globs", [])),
            "entities": entity_ids(f"{key}.entities", raw.get("entities", []))}


def tags(key: str, value: Any) -> dict:
    return {_plain(string(f"{key} (a key)", k)): string(f"{key}.{k}", v)
            for k, v in mapping(key, value).items()}


def customize(keys: Callable[[str, Any], str]) -> Callable[[str, Any], dict]:
    """``component_config*``: {entity id, domain or glob: {override_measurement,
    ignore_attributes}}."""
    def check(key: str, value: Any) -> dict:
        out = {}
        for name, entry in mapping(key, value).items():
            sub = f"{key}.{name}"
            entry = mapping(sub, entry)
            _no_extra(sub, entry, ("override_measurement", "ignore_attributes"))
            item = {}
            if "override_measurement" in entry:
                item["override_measurement"] = string(f"{sub}.override_measurement",
                                                      entry["override_measurement"])
            if "ignore_attributes" in entry:
                item["ignore_attributes"] = string_list(f"{sub}.ignore_attributes",
                                                        entry["ignore_attributes"])
            out[_plain(keys(f"{key} (a key)", name))] = item
        return out
    return check


# option -> (validator, default); None: no default (absent stays absent)
OPTIONS: dict[str, tuple[Callable[[str, Any], Any], Any]] = {
    "api_version": (api_version, "1"), "host": (string, None), "path": (string, None),
    "port": (port, None), "ssl": (boolean, None), "verify_ssl": (boolean, True),
    "ssl_ca_cert": (isfile, None), "precision": (one_of(PRECISIONS), None),
    "username": (string, None), "password": (string, None), "database": (string, "home_assistant"),
    "token": (string, None), "organization": (string, None), "bucket": (string, "Home Assistant"),
    "max_retries": (positive_int, 0), "default_measurement": (string, None),
    "measurement_attr": (one_of(MEASUREMENT_ATTRS), "unit_of_measurement"),
    "override_measurement": (string, None), "tags": (tags, {}),
    "tags_attributes": (string_list, []), "ignore_attributes": (string_list, []),
    "component_config": (customize(entity_id), {}),
    "component_config_glob": (customize(string), {}),
    "component_config_domain": (customize(string), {}),
    "include": (entity_filter, {}), "exclude": (entity_filter, {}),
}
PAIRS = (("username", "password"), ("token", "organization"))


def validate(block: Any) -> dict:
    """The block as HA's ``INFLUX_SCHEMA`` leaves it (defaults filled in, ``url`` for v2)."""
    if block is None:
        raise ConfigError(f"{DOMAIN}: is empty; Home Assistant refuses it too (expected a "
                          f"dictionary)")
    block = mapping("", block) if not isinstance(block, dict) else block
    _no_extra("", block, tuple(OPTIONS))
    options = {}
    for name, (check, default) in OPTIONS.items():
        if name in block:
            options[name] = check(name, block[name])
        elif default is not None:
            options[name] = check(name, default) if name in ("include", "exclude") else default
    for first, second in PAIRS:
        if (first in options) != (second in options):
            raise _fail(first, f"{first} and {second} must be given together")
    _version_rules(options)
    return options


def _version_rules(options: dict) -> None:
    if options["api_version"] == "2":
        if "token" not in options:
            raise _fail("token", "token and bucket are required when api_version is 2")
        if "username" in options:
            raise _fail("username", "username and password are only allowed when api_version "
                                    "is 1")
    elif "token" in options:
        raise _fail("token", "token and bucket are only allowed when api_version is 2")


def _no_extra(key: str, raw: dict, known: tuple[str, ...]) -> None:
    for name in raw:
        if name not in known:
            where = f"{key}.{name}" if key else str(name)
            raise ConfigError(f"{DOMAIN}.{where} is not an option of Home Assistant's influxdb "
                              f"integration (Home Assistant refuses it too; known: "
                              f"{', '.join(known)})")
