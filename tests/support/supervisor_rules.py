"""The Home Assistant Supervisor's rules for an add-on ("app") folder, restated with voluptuous.

The Supervisor cannot run here, so the add-on's files are checked against these rules instead.
They follow the Supervisor's source at commit 090ef31ec024952c2469ed5a7c9f3ce8c1a5499e
(home-assistant/supervisor, August 2026), Apache-2.0:

- ``SCHEMA_APP_CONFIG``: ``_SCHEMA_APP_CONFIG`` and ``_warn_app_config`` in
  ``supervisor/apps/validate.py``; the value validators (``network_port``, ``docker_ports``,
  ``docker_ports_description``, ``docker_image``) from ``supervisor/validate.py``; the enums and
  lists from ``supervisor/const.py`` and ``supervisor/apps/const.py``. Two simplifications, both
  more lenient than nothing and neither used by our config: ``version_tag`` is AwesomeVersion there
  (any string passes) and ``privileged`` takes Docker capability names.
- ``app_options``: ``AppOptions`` in ``supervisor/apps/options.py`` (how ``options`` is checked
  against ``schema`` before the add-on starts), without ``device`` and ``!secret`` lookups.
- ``SCHEMA_APP_TRANSLATIONS``, ``SCHEMA_REPOSITORY_CONFIG``: ``supervisor/apps/validate.py``,
  ``supervisor/store/validate.py``.
- ``excluded_from_backup``: ``App._is_excluded_by_filter`` in ``supervisor/apps/app.py``.

The config schema removes unknown keys silently (``extra=vol.REMOVE_EXTRA``), so
``dropped_keys`` reports them: a misspelt key would otherwise pass and do nothing.
"""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import Any

import voluptuous as vol

ARCH_ALL = ["aarch64", "amd64"]
ARCH_DEPRECATED = ["armhf", "armv7", "i386"]
ROLES = ["default", "homeassistant", "backup", "manager", "admin"]
STARTUP = ["initialize", "system", "services", "application", "once"]
BOOT_CONFIG = ["auto", "manual", "manual_only"]
STAGES = ["stable", "experimental", "deprecated"]
MAPPING_TYPES = ["data", "config", "ssl", "local_apps", "backup", "share", "media",
                 "homeassistant_config", "all_app_configs", "app_config", "addons",
                 "all_addon_configs", "addon_config"]
INGRESS_DYNAMIC_PORTS = (62000, 65500)
RE_SLUG = r"[-_.A-Za-z0-9]+"
RE_SERVICE = re.compile(r"^(?P<service>mqtt|mysql):(?P<rights>provide|want|need)$")
RE_SCHEMA_ELEMENT = re.compile(
    r"^(?:"
    r"|bool|email|url|port"
    r"|device(?:\((?P<filter>subsystem=[a-z]+)\))?"
    r"|str(?:\((?P<s_min>\d+)?,(?P<s_max>\d+)?\))?"
    r"|password(?:\((?P<p_min>\d+)?,(?P<p_max>\d+)?\))?"
    r"|int(?:\((?P<i_min>-?\d+)?,(?P<i_max>-?\d+)?\))?"
    r"|float(?:\((?P<f_min>-?\d*\.?\d+)?,(?P<f_max>-?\d*\.?\d+)?\))?"
    r"|match\((?P<match>.*)\)"
    r"|list\((?P<list>.+)\)"
    r")\??$"
)
RE_WATCHDOG = r"^(?:https?|\[PROTO:\w+\]|tcp):\/\/\[HOST\]:(\[PORT:\d+\]|\d+).*$"
RE_WEBUI = r"^(?:https?|\[PROTO:\w+\]):\/\/\[HOST\]:\[PORT:\d+\].*$"
_RE_IMAGE_COMPONENT = re.compile(r"^[a-z0-9{][a-z0-9.\-_{}]*$")

network_port = vol.All(vol.Coerce(int), vol.Range(min=1, max=65535))
docker_port = vol.All(str, vol.Match(r"^\d+(?:/tcp|/udp)?$"))
docker_ports = vol.Schema({docker_port: vol.Maybe(network_port)})
docker_ports_description = vol.Schema({docker_port: str})
version_tag = vol.Coerce(str)


def docker_image(image: Any) -> str:
    """An image name without a tag (the Supervisor manages the tag from ``version``)."""
    if not image or not isinstance(image, str):
        raise vol.Invalid(f"Expected a non-empty string for docker image, got: {image}")
    path = image.split("/", 1)[1] if "." in image.split("/", 1)[0] else image
    if ":" in path:
        raise vol.Invalid(f"Docker image must not contain a tag: {image}")
    for component in path.split("/"):
        if not _RE_IMAGE_COMPONENT.match(component):
            raise vol.Invalid(f"Invalid Docker image path component '{component}' in: {image}")
    return image


SCHEMA_ELEMENT = vol.Schema(vol.Any(
    vol.Match(RE_SCHEMA_ELEMENT),
    [vol.Any(vol.Match(RE_SCHEMA_ELEMENT), {str: vol.Self})],
    {str: vol.Self},
))

_SCHEMA_APP_CONFIG = vol.Schema({
    vol.Required("name"): str,
    vol.Required("version"): version_tag,
    vol.Required("slug"): vol.Match(f"^{RE_SLUG}$"),
    vol.Required("description"): str,
    vol.Required("arch"): [vol.In(ARCH_ALL + ARCH_DEPRECATED)],
    vol.Optional("machine"): vol.All([str], vol.Unique()),
    vol.Optional("url"): vol.Url(),
    vol.Optional("startup", default="application"): vol.In(STARTUP),
    vol.Optional("boot", default="auto"): vol.In(BOOT_CONFIG),
    vol.Optional("init", default=True): vol.Boolean(),
    vol.Optional("advanced", default=False): vol.Boolean(),
    vol.Optional("stage", default="stable"): vol.In(STAGES),
    vol.Optional("ports"): docker_ports,
    vol.Optional("ports_description"): docker_ports_description,
    vol.Optional("watchdog"): vol.Match(RE_WATCHDOG),
    vol.Optional("webui"): vol.Match(RE_WEBUI),
    vol.Optional("ingress", default=False): vol.Boolean(),
    vol.Optional("ingress_port", default=8099): vol.Any(network_port, vol.Equal(0)),
    vol.Optional("ingress_entry"): str,
    vol.Optional("ingress_stream", default=False): vol.Boolean(),
    vol.Optional("panel_icon", default="mdi:puzzle"): str,
    vol.Optional("panel_title"): str,
    vol.Optional("panel_admin", default=True): vol.Boolean(),
    vol.Optional("homeassistant"): version_tag,
    **{vol.Optional(key, default=False): vol.Boolean() for key in (
        "host_network", "host_pid", "host_ipc", "host_uts", "host_dbus", "udev", "tmpfs",
        "full_access", "audio", "video", "gpio", "usb", "uart", "devicetree", "kernel_modules",
        "realtime", "hassio_api", "homeassistant_api", "stdin", "legacy", "docker_api",
        "auth_api", "journald")},
    vol.Optional("devices"): [str],
    vol.Optional("map", default=list): [vol.Schema({
        vol.Required("type"): vol.In(MAPPING_TYPES),
        vol.Optional("read_only", default=True): bool,
        vol.Optional("path"): str,
    })],
    vol.Optional("environment"): {vol.Match(r"\w*"): str},
    vol.Optional("privileged"): [str],
    vol.Optional("apparmor", default=True): vol.Boolean(),
    vol.Optional("hassio_role", default="default"): vol.In(ROLES),
    vol.Optional("services"): [vol.Match(RE_SERVICE)],
    vol.Optional("discovery"): [str],
    vol.Optional("backup_exclude"): [str],
    vol.Optional("backup_pre"): str,
    vol.Optional("backup_post"): str,
    vol.Optional("backup", default="hot"): vol.In(["hot", "cold"]),
    vol.Optional("options", default={}): dict,
    vol.Optional("schema", default={}): vol.Any(vol.Schema({str: SCHEMA_ELEMENT}), False),
    vol.Optional("image"): docker_image,
    vol.Optional("ulimits", default=dict): vol.Any(
        {str: vol.Coerce(int)},
        {str: vol.Any(vol.Coerce(int), vol.Schema({vol.Required("soft"): vol.Coerce(int),
                                                   vol.Required("hard"): vol.Coerce(int)}))}),
    vol.Optional("timeout", default=10): vol.All(vol.Coerce(int), vol.Range(min=10, max=300)),
    vol.Optional("breaking_versions", default=list): [version_tag],
}, extra=vol.REMOVE_EXTRA)


def advisories(config: dict) -> list[str]:
    """What ``_warn_app_config`` logs (deprecations, redundant settings); raises where it does."""
    found = []
    if "advanced" in config:
        found.append("deprecated 'advanced' field")
    if config.get("backup") == "cold" and (config.get("backup_pre") or config.get("backup_post")):
        found.append("pre/post backup commands ignored with cold backups")
    found += [f"deprecated arch {arch}" for arch in config.get("arch", [])
              if arch in ARCH_DEPRECATED]
    if "codenotary" in config:
        found.append("deprecated 'codenotary' field")
    if config.get("full_access") and any(config.get(k) for k in ("devices", "uart", "usb", "gpio")):
        found.append("selective device access redundant with full_access")
    if config.get("ingress") and config.get("ingress_port") == 0:
        for port in config.get("ports") or {}:
            number = str(port).partition("/")[0]
            if number.isdigit() and INGRESS_DYNAMIC_PORTS[0] <= int(number) <= \
                    INGRESS_DYNAMIC_PORTS[1]:
                raise vol.Invalid(f"port {number} is reserved for dynamic ingress ports")
    return found


def validate_app_config(config: dict) -> dict:
    if not isinstance(config, dict) or not config.get("name"):
        raise vol.Invalid("Invalid app config!")
    return _SCHEMA_APP_CONFIG(dict(config))


def dropped_keys(config: dict, validated: dict) -> set[str]:
    """Top-level keys the Supervisor would silently drop."""
    return set(config) - set(validated)


# ---- options against schema (AppOptions) ------------------------------------------------------

_RANGE_PARTS = ("i_min", "i_max", "f_min", "f_max", "s_min", "s_max", "p_min", "p_max")


def app_options(schema: dict, options: Any, name: str = "app") -> dict:
    """``options`` checked against ``schema`` the way the Supervisor does before starting the
    add-on (unknown keys are dropped with a warning there; here they raise, to be caught)."""
    if not isinstance(options, dict):
        raise vol.Invalid("expected a dictionary")
    result = {}
    for key, value in options.items():
        if key not in schema:
            raise vol.Invalid(f"Option '{key}' does not exist in the schema for {name}")
        result[key] = _element(schema[key], value, key)
    _check_missing(schema, result, "root")
    return result


def _element(typ: Any, value: Any, key: str) -> Any:
    if isinstance(typ, list):
        if not isinstance(value, list):
            raise vol.Invalid(f"Invalid list for option '{key}'")
        return [_element(typ[0], item, key) for item in value]
    if isinstance(typ, dict):
        if not isinstance(value, dict):
            raise vol.Invalid(f"Invalid dict for option '{key}'")
        nested = {}
        for child, child_value in value.items():
            if child not in typ:
                raise vol.Invalid(f"Unknown option '{child}' in '{key}'")
            nested[child] = _element(typ[child], child_value, child)
        _check_missing(typ, nested, key)
        return nested
    return _single(typ, value, key)


def _single(typ: str, value: Any, key: str) -> Any:
    if value is None:
        raise vol.Invalid(f"Missing required option '{key}'")
    match = RE_SCHEMA_ELEMENT.match(typ)
    if not match:
        raise vol.Invalid(f"Unknown type '{typ}'")
    bounds = {part[2:]: float(match.group(part)) for part in _RANGE_PARTS if match.group(part)}
    if typ.startswith(("str", "password")):
        return vol.All(str, vol.Length(**bounds))(value)
    if typ.startswith("int"):
        return vol.All(vol.Coerce(int), vol.Range(**bounds))(value)
    if typ.startswith("float"):
        return vol.All(vol.Coerce(float), vol.Range(**bounds))(value)
    if typ.startswith("bool"):
        return vol.Boolean()(value)
    if typ.startswith("email"):
        return vol.Email()(value)
    if typ.startswith("url"):
        return vol.Url()(value)
    if typ.startswith("port"):
        return network_port(value)
    if typ.startswith("match"):
        return vol.Match(match.group("match"))(str(value))
    if typ.startswith("list"):
        return vol.In(match.group("list").split("|"))(str(value))
    raise vol.Invalid(f"type '{typ}' of option '{key}' is not handled here")


def _check_missing(origin: dict, exists: dict, root: str) -> None:
    for missing in set(origin) - set(exists):
        schema = origin[missing]
        if isinstance(schema, list) and schema:
            schema = schema[0]
        if isinstance(schema, str) and schema.endswith("?"):
            continue
        raise vol.Invalid(f"Missing option '{missing}' in {root}")


# ---- translations, repository, backups --------------------------------------------------------

SCHEMA_TRANSLATION_CONFIGURATION = vol.Schema({
    vol.Required("name"): str,
    vol.Optional("description"): vol.Maybe(str),
    vol.Optional("fields"): {str: vol.Self},
}, extra=vol.REMOVE_EXTRA)

SCHEMA_APP_TRANSLATIONS = vol.Schema({
    vol.Optional("configuration"): {str: SCHEMA_TRANSLATION_CONFIGURATION},
    vol.Optional("network"): {str: str},
}, extra=vol.REMOVE_EXTRA)

SCHEMA_REPOSITORY_CONFIG = vol.Schema({
    vol.Required("name"): str,
    vol.Optional("url"): vol.Url(),
    vol.Optional("maintainer"): str,
}, extra=vol.REMOVE_EXTRA)


def excluded_from_backup(path_on_host: PurePath, backup_exclude: list[str]) -> bool:
    """A file of the add-on's data folder, as the Supervisor sees its path, matched against each
    ``backup_exclude`` pattern with ``PurePath.match``."""
    return any(path_on_host.match(pattern) for pattern in backup_exclude)
