"""Configuration: YAML + environment → one frozen ``Config``, validated once at start-up.

    config = load_config("ha-ingestor.yaml")
    config.mqtt.port, config.queue.dir, config.influxdb.flush_interval

Errors are ``ConfigError`` naming the dotted key and the bad value (exit code 2).
"""

from __future__ import annotations

import os
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Mapping

from ha_ingestor.config import fleet, loader, model
from ha_ingestor.config.model import (COMPONENTS, Config, HomeAssistantConfig, InfluxConfig,
                                      MetricsConfig, MqttConfig, QueueConfig, RunConfig,
                                      TlsConfig)
from ha_ingestor.config.values import is_secret_name
from ha_ingestor.errors import ConfigError

__all__ = ["COMPONENTS", "Config", "ConfigError", "HomeAssistantConfig", "InfluxConfig",
           "MetricsConfig", "MqttConfig", "QueueConfig", "RunConfig", "TlsConfig",
           "default_config_path", "load_config", "load_queue_config", "load_schema_config",
           "redacted", "reference_rows"]

CONFIG_ENV = "HA_INGESTOR_CONFIG"
SECTIONS = {**model.SECTIONS, "nats": fleet.NATS_KEYS}
TLS_SECTIONS = model.TLS_SECTIONS + ("nats",)
KNOWN_SECTIONS = tuple(SECTIONS) + ("schema",)
DEFAULT_FILE = "ha-ingestor.yaml"
REDACTED = "***"
_SHOWN_AS = {"imports": "import"}        # config fields named apart from their YAML section


def default_config_path(env: Mapping[str, str] | None = None) -> Path | None:
    """``$HA_INGESTOR_CONFIG``, else ``./ha-ingestor.yaml`` if it exists, else None (defaults and
    environment only)."""
    env = os.environ if env is None else env
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    return Path(DEFAULT_FILE) if Path(DEFAULT_FILE).exists() else None


def load_queue_config(path: Path | str | None, env: Mapping[str, str] | None = None
                      ) -> QueueConfig:
    """Only the ``queue:`` section: what the ``queue`` inspection commands need, so they work even
    where another section (an unset token, a secret that only the service can read) would stop a
    collector."""
    env = dict(os.environ if env is None else env)
    raw = loader.read_yaml(Path(path) if path else None)
    return model.build_section("queue", raw.section("queue", env))


def load_schema_config(path: Path | str | None, env: Mapping[str, str] | None = None):
    """Only the ``schema:`` section: what ``convert`` and ``queue peek --lines`` need."""
    env = dict(os.environ if env is None else env)
    raw = loader.read_yaml(Path(path) if path else None)
    return _build_schema(raw.section("schema", env))


def load_config(path: Path | str | None, env: Mapping[str, str] | None = None,
                text: str | None = None) -> Config:
    """Read, substitute, override, resolve secrets, validate. ``text`` instead of the file's
    content (``config check -``). Raises ConfigError."""
    env = dict(os.environ if env is None else env)
    raw = loader.read_yaml(Path(path) if path else None, text)
    for section in raw.sections(env):
        if section not in KNOWN_SECTIONS:
            raise ConfigError(f"{section} is not a known section "
                              f"(known: {', '.join(KNOWN_SECTIONS)})")
    sections = {name: raw.section(name, env) for name in KNOWN_SECTIONS}
    config = Config(
        queue=model.build_section("queue", sections["queue"]),
        mqtt=model.build_section("mqtt", sections["mqtt"]),
        homeassistant=model.build_section("homeassistant", sections["homeassistant"]),
        influxdb=model.build_section("influxdb", sections["influxdb"]),
        schema=_build_schema(sections["schema"]),
        metrics=model.build_metrics(sections["metrics"]),
        run=model.build_section("run", sections["run"]),
        imports=model.build_section("import", sections["import"]),
        nats=fleet.build_nats(sections["nats"]),
        source=str(path) if path else ("<stdin>" if text is not None else None),
    )
    model.check_consistency(config)
    fleet.check_site(config.nats, config.homeassistant.enabled)
    return config


def _build_schema(raw: Any):
    from ha_ingestor.config.schema import build_schema
    return build_schema(raw, "schema")


def redacted(config: Config) -> dict:
    """The effective config as plain data with every secret replaced by ``***``: a valid config
    file again (``config show | config check -``)."""
    return _plain(config, ())


def _plain(value: Any, path: tuple[str, ...]) -> Any:
    if is_dataclass(value):
        return {_SHOWN_AS.get(f.name, f.name): (_pairs(getattr(value, f.name), path + (f.name,)) if _is_pairs(f)
                         else _plain(getattr(value, f.name), path + (f.name,)))
                for f in fields(value) if f.name != "source"}
    if isinstance(value, dict):
        return {k: _plain(v, path + (str(k),)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, path) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is not None and path and is_secret_name(path[-1]):
        return REDACTED
    return value


def _is_pairs(f) -> bool:
    """A mapping held as a tuple of (key, value) pairs (frozen config objects)."""
    return str(f.type).startswith("tuple[tuple[str,")


def _pairs(value: tuple, path: tuple[str, ...]) -> dict:
    return {k: _plain(v, path + (k,)) for k, v in value}


def reference_rows() -> list[tuple[str, str, str, str, str]]:
    """Every key as (dotted key, type, default, environment variable, description), for the
    configuration reference in docs/configuration.md."""
    rows = []
    for section, keys in SECTIONS.items():
        for key in keys:
            rows.append(_row(f"{section}.{key.name}", key))
        if section in TLS_SECTIONS:
            rows.extend(_row(f"{section}.tls.{key.name}", key) for key in model.TLS_KEYS)
        if section == "metrics":
            rows.extend(_row(f"metrics.influxdb.{key.name}", key)
                        for key in model.METRICS_INFLUX_KEYS)
            for name, port in model.METRICS_PORTS.items():
                rows.append((f"metrics.ports.{name}", "port", str(port),
                             _env_name(f"metrics.ports.{name}"),
                             f"Port of the `{name}` process's endpoints (0 disables)."))
    return rows


def _row(dotted: str, key: model.Key) -> tuple[str, str, str, str, str]:
    kind = getattr(key.parse, "__name__", "value").removeprefix("as_").replace("_", " ")
    default = key.shown_default or ("" if key.default is None else
                                    str(key.default) if not isinstance(key.default, list)
                                    else "[" + ", ".join(key.default) + "]")
    doc = key.doc + (" Secret: shown as `***` by `config show`." if key.secret else "")
    return dotted, kind, default, _env_name(dotted), doc


def _env_name(dotted: str) -> str:
    return loader.ENV_PREFIX + "__".join(part.upper() for part in dotted.split("."))
