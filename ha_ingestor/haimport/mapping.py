"""Home Assistant's validated ``influxdb:`` options → HA Ingestor's ``influxdb:`` and
``schema.state_changed:`` sections, with every value from ``!secret``/``!env_var`` (and every
password or token) printed as a reference, and what has no equivalent listed.

Connection: ``host``/``port``/``path``/``ssl`` become ``url`` as HA's clients build it
(influxdb-python for api_version 1: ``http[s]://host:port/path``, default ``localhost:8086``;
influxdb-client for 2: ``https://host[:port]path``, default InfluxDB Cloud), ``api_version`` →
``api``, ``organization`` → ``org``, ``verify_ssl``/``ssl_ca_cert`` → ``tls.verify``/
``tls.ca_file``. Every state_changed option keeps its name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ha_ingestor.haimport.haschema import DEFAULT_HOST_V2, MEASUREMENT_ATTRS
from ha_ingestor.haimport.hayaml import Ref

SCHEMA_OPTIONS = ("include", "exclude", "measurement_attr", "default_measurement",
                  "override_measurement", "tags", "tags_attributes", "ignore_attributes",
                  "component_config", "component_config_domain", "component_config_glob")
SECRET_DIR = "/run/secrets"


@dataclass
class Mapped:
    influxdb: dict = field(default_factory=dict)
    state_changed: dict = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)   # env var -> what to put in it
    no_equivalent: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class References:
    """How a value from a secret, a variable or an inline password is printed."""

    def __init__(self, mapped: Mapped, files: bool):
        self.mapped, self.files = mapped, files
        self._names: dict[tuple, str] = {}

    def text(self, value: Any, inline_secret: str | None = None) -> Any:
        """``${VAR}`` for a Ref (or for an inline secret, named ``inline_secret``), else the
        value."""
        if isinstance(value, Ref):
            return "${%s}" % self._variable(value)
        if inline_secret is not None:
            return "${%s}" % self._inline(inline_secret)
        return value

    def secret(self, section: dict, key: str, value: Any, inline_name: str) -> None:
        """Put a password or token into ``section``: a reference, never the value."""
        if self.files:
            name = value.name if isinstance(value, Ref) and value.kind == "secret" else inline_name
            section[f"{key}_file"] = f"{SECRET_DIR}/{name}"
            what = (f"the secret {value.name!r} of Home Assistant's secrets.yaml"
                    if isinstance(value, Ref) and value.kind == "secret"
                    else f"influxdb.{key} of Home Assistant's influxdb block")
            self.mapped.variables[section[f"{key}_file"]] = f"a file holding {what}"
            return
        section[key] = self.text(value, inline_secret=inline_name.upper())

    def _variable(self, ref: Ref) -> str:
        key = (ref.kind, ref.name)
        if key not in self._names:
            if ref.kind == "env":
                self._names[key] = ref.name
                what = f"the variable Home Assistant reads with !env_var {ref.name}"
                if ref.default is not None:
                    self._names[key] = f"{ref.name}:-{ref.default}"
                    what += f" (default {ref.default!r})"
            else:
                self._names[key] = self._unique(re.sub(r"\W", "_", ref.name).upper())
                what = f"the secret {ref.name!r} of Home Assistant's secrets.yaml"
            self.mapped.variables[self._names[key].split(":-")[0]] = what
        return self._names[key]

    def _inline(self, name: str) -> str:
        key = ("inline", name)
        if key not in self._names:
            self._names[key] = self._unique(name)
            self.mapped.variables[self._names[key]] = (
                f"influxdb.{name.split('_', 1)[1].lower()}, written inline in Home Assistant's "
                f"influxdb block (not copied here)")
        return self._names[key]

    def _unique(self, name: str) -> str:
        if name[:1].isdigit() or not name:
            name = f"HA_SECRET_{name}"
        taken = {v.split(":-")[0] for v in self._names.values()}
        candidate, n = name, 2
        while candidate in taken:
            candidate, n = f"{name}_{n}", n + 1
        return candidate


def map_options(options: dict, raw: dict, files: bool = False) -> Mapped:
    """``options``: validated (haschema.validate); ``raw``: the block as written, to tell which
    options were given."""
    mapped = Mapped()
    refs = References(mapped, files)
    _connection(options, raw, mapped, refs)
    _state_changed(options, mapped, refs)
    _no_equivalent(options, raw, mapped)
    return mapped


def _connection(options: dict, raw: dict, mapped: Mapped, refs: References) -> None:
    v2 = options["api_version"] == "2"
    out = mapped.influxdb
    out["api"] = "v2" if v2 else "v1"
    out["url"] = _url(options, v2, refs, mapped)
    if v2:
        out["org"] = refs.text(options["organization"])
        out["bucket"] = refs.text(options["bucket"])
        refs.secret(out, "token", options["token"], "influxdb_token")
    else:
        out["database"] = refs.text(options["database"])
        if "username" in options:
            out["username"] = refs.text(options["username"])
            refs.secret(out, "password", options["password"], "influxdb_password")
    _tls(options, raw, out, mapped)


def _url(options: dict, v2: bool, refs: References, mapped: Mapped) -> str:
    ssl = options.get("ssl", v2)
    for name in ("ssl",):
        if isinstance(options.get(name), Ref):
            mapped.notes.append(f"influxdb.{name} came from {_origin(options[name])}; its value "
                                f"now ({_value(options[name])}) decides the URL scheme")
    host = refs.text(options.get("host", DEFAULT_HOST_V2 if v2 else "localhost"))
    url = f"{'https' if _value(ssl) else 'http'}://{host}"
    if "port" in options or not v2:
        url += f":{refs.text(options.get('port', 8086))}"
    if "path" in options:
        path = options["path"]
        text = refs.text(path)
        leading = str(_value(path)).startswith("/")
        url += text if v2 or leading or not _value(path) else f"/{text}"
    return url


def _tls(options: dict, raw: dict, out: dict, mapped: Mapped) -> None:
    given = [name for name in ("verify_ssl", "ssl_ca_cert") if name in raw]
    if not out["url"].startswith("https://"):
        if given:
            mapped.notes.append(f"influxdb.{given[0]} is left out: the URL is http:// (no "
                                f"TLS), where Home Assistant does not use it either")
        return
    tls = {}
    if not options["verify_ssl"]:
        tls["verify"] = False
    if "ssl_ca_cert" in options:
        tls["ca_file"] = options["ssl_ca_cert"]
    if tls:
        out["tls"] = tls


def _state_changed(options: dict, mapped: Mapped, refs: References) -> None:
    out = mapped.state_changed
    for name in ("include", "exclude"):
        kept = {k: v for k, v in options[name].items() if v}
        if kept:
            out[name] = _texts(kept, refs)
    if options["measurement_attr"] != MEASUREMENT_ATTRS[0]:
        out["measurement_attr"] = options["measurement_attr"]
    for name in ("default_measurement", "override_measurement"):
        if name in options:
            out[name] = refs.text(options[name])
    tags = {k: v for k, v in options["tags"].items() if k}
    if len(tags) != len(options["tags"]):
        mapped.notes.append("a tag with an empty name is left out (InfluxDB has no such tag, so "
                            "Home Assistant never wrote it)")
    for name, value in (("tags", tags), ("tags_attributes", options["tags_attributes"]),
                        ("ignore_attributes", options["ignore_attributes"]),
                        ("component_config", options["component_config"]),
                        ("component_config_domain", options["component_config_domain"]),
                        ("component_config_glob", options["component_config_glob"])):
        if value:
            out[name] = _texts(value, refs)


def _texts(value: Any, refs: References) -> Any:
    if isinstance(value, dict):
        return {k: _texts(v, refs) for k, v in value.items()}
    if isinstance(value, list):
        return [_texts(v, refs) for v in value]
    return refs.text(value)


def _no_equivalent(options: dict, raw: dict, mapped: Mapped) -> None:
    if "max_retries" in raw:
        mapped.no_equivalent.append(
            f"influxdb.max_retries ({options['max_retries']}): HA Ingestor never gives up on a "
            f"write; events wait in the queue on disk until InfluxDB takes them")
    if "precision" in raw:
        mapped.no_equivalent.append(
            f"influxdb.precision ({options['precision']}): HA Ingestor writes nanosecond "
            f"timestamps (Home Assistant rounded them to {options['precision']}); points at the "
            f"same rounded time are no longer merged into one")
    unused = [k for k in ("database",) if k in raw and options["api_version"] == "2"] + \
        [k for k in ("bucket",) if k in raw and options["api_version"] == "1"]
    for name in unused:
        mapped.notes.append(f"influxdb.{name} is not used with api_version "
                            f"{options['api_version']} (by Home Assistant either)")
    if options["api_version"] == "1" and "username" not in options:
        mapped.notes.append("no username: HA Ingestor writes without credentials (Home "
                            "Assistant's client sent root/root, which matters only if InfluxDB "
                            "has authentication on)")


def _origin(ref: Ref) -> str:
    return f"!secret {ref.name}" if ref.kind == "secret" else f"!env_var {ref.name}"


def _value(value: Any) -> Any:
    return value.value if isinstance(value, Ref) else value
