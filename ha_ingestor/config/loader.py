"""From a YAML file and the environment to one plain mapping: ``${ENV}`` substitution,
``HA_INGESTOR_<SECTION>__<KEY>`` overrides and ``<key>_file`` secrets. Typing and validation happen
afterwards, once, in ``model``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from ha_ingestor.errors import ConfigError

ENV_PREFIX = "HA_INGESTOR_"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def read_yaml(path: Path | None) -> dict:
    """The file's top-level mapping; an absent optional file gives {}."""
    if path is None:
        return {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} not found") from None
    except OSError as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections, "
                          f"got {type(data).__name__}")
    return data


def substitute_env(value: Any, env: Mapping[str, str], key: str = "") -> Any:
    """Replace ``${NAME}`` (or ``${NAME:-default}``) in every string, recursively."""
    if isinstance(value, dict):
        return {k: substitute_env(v, env, _join(key, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_env(v, env, f"{key}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(f"{key} refers to environment variable {name}, which is not set")
    return _ENV_REF.sub(replace, value)


def apply_env_overrides(data: dict, env: Mapping[str, str]) -> dict:
    """``HA_INGESTOR_MQTT__PORT=1884`` sets ``mqtt.port``; ``__`` separates nesting levels
    (``HA_INGESTOR_MQTT__TLS__CA_FILE``). Values are read as YAML scalars or flow lists
    (``true``, ``1884``, ``["a/#", "b/#"]``)."""
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or "__" not in name[len(ENV_PREFIX):]:
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX):].split("__")]
        if not all(path):
            raise ConfigError(f"environment variable {name}: empty key segment")
        _set_path(data, path, _parse_env_value(name, env[name]))
    return data


def resolve_secret_files(data: Any, key: str = "") -> Any:
    """``password_file: /run/secrets/x`` becomes ``password: <file content, stripped>``."""
    if isinstance(data, list):
        return [resolve_secret_files(v, f"{key}[{i}]") for i, v in enumerate(data)]
    if not isinstance(data, dict):
        return data
    out: dict = {}
    for name, value in data.items():
        if isinstance(name, str) and name.endswith("_file") and _is_secret_name(name[:-5]):
            out[name[:-5]] = _read_secret(_join(key, name), value)
        else:
            out[name] = resolve_secret_files(value, _join(key, str(name)))
    return out


def _is_secret_name(name: str) -> bool:
    return name in ("password", "token") or name.endswith(("_password", "_token"))


def _read_secret(key: str, value: Any) -> str | None:
    if value in (None, ""):
        return None
    try:
        return Path(str(value)).expanduser().read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read secret file {str(value)!r}: {exc.strerror}") \
            from None


def _parse_env_value(name: str, raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw


def _set_path(data: dict, path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def _join(prefix: str, name: Any) -> str:
    return f"{prefix}.{name}" if prefix else str(name)
