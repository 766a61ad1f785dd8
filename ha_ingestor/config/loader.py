"""From a YAML file and the environment to one plain mapping: ``${ENV}`` substitution,
``HA_INGESTOR_<SECTION>__<KEY>`` overrides, ``!secret``/``!env_var`` and ``<key>_file`` secrets.
Typing and validation happen afterwards, once, in ``model``.

Order, per section: ``${...}`` in the file's strings, then the environment overrides (which
replace a value whole), then ``!secret``/``!env_var``, then ``*_file``. A secret's value is never
substituted, parsed or echoed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

from ha_ingestor.config import yamlfile
from ha_ingestor.config.values import EnvText, is_secret_name
from ha_ingestor.errors import ConfigError

ENV_PREFIX = "HA_INGESTOR_"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class RawConfig:
    """The file's top-level mapping with its tags unresolved, and where it came from."""

    def __init__(self, data: dict, folder: Path):
        self.data = data
        self.secrets = yamlfile.Secrets(folder)

    def section(self, name: str, env: Mapping[str, str]) -> Any:
        """One section, substituted, overridden and resolved."""
        value = substitute_env(self.data.get(name), env, name)
        value = apply_env_overrides({name: value}, env, name)[name]
        value = yamlfile.resolve_refs(value, self.secrets, env, name)
        return resolve_secret_files(value, name)

    def sections(self, env: Mapping[str, str]) -> list[str]:
        """Section names in the file and in the environment overrides."""
        names = list(self.data)
        for var in sorted(env):
            section = _override_path(var)
            if section and section[0] not in names:
                names.append(section[0])
        return names


def read_yaml(path: Path | None, text: str | None = None) -> RawConfig:
    """The file's (or ``text``'s) top-level mapping; no file gives {}. ``!secret`` is looked up
    beside the file (beside the working directory for text)."""
    if path is None and text is None:
        return RawConfig({}, Path.cwd())
    name = str(path) if path is not None else "<stdin>"
    if text is None:
        text = _read_text(Path(path))
    data = yamlfile.load(text, name if path is not None else str(Path.cwd() / "<stdin>"))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {name!r} must hold a mapping of sections, "
                          f"got {type(data).__name__}")
    folder = Path(path).resolve().parent if path is not None else Path.cwd()
    return RawConfig(data, folder)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} not found") from None
    except OSError as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {exc.strerror}") from None


def substitute_env(value: Any, env: Mapping[str, str], key: str = "") -> Any:
    """Replace ``${NAME}`` (or ``${NAME:-default}``) in every string, recursively. As in shells
    and compose files, ``:-`` uses the default when NAME is unset or empty."""
    if isinstance(value, dict):
        return {k: substitute_env(v, env, _join(key, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_env(v, env, f"{key}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if env.get(name):
            return env[name]
        if default is not None:
            return default
        if name in env:
            return ""
        raise ConfigError(f"{key} refers to environment variable {name}, which is not set")
    return _ENV_REF.sub(replace, value)


def apply_env_overrides(data: dict, env: Mapping[str, str], section: str | None = None) -> dict:
    """``HA_INGESTOR_MQTT__PORT=1884`` sets ``mqtt.port``; ``__`` separates nesting levels
    (``HA_INGESTOR_MQTT__TLS__CA_FILE``). The value is kept verbatim, as text: each key's own
    parser reads numbers, booleans and durations from text, and list or mapping keys read a
    YAML flow list or mapping (``["a/#", "b/#"]``). Only ``section``'s, when given."""
    for name in sorted(env):
        path = _override_path(name)
        if not path or (section is not None and path[0] != section):
            continue
        _set_path(data, path, EnvText(env[name]))
    return data


def _override_path(name: str) -> list[str] | None:
    if not name.startswith(ENV_PREFIX) or "__" not in name[len(ENV_PREFIX):]:
        return None
    path = [part.lower() for part in name[len(ENV_PREFIX):].split("__")]
    if not all(path):
        raise ConfigError(f"environment variable {name}: empty key segment")
    return path


def resolve_secret_files(data: Any, key: str = "") -> Any:
    """``password_file: /run/secrets/x`` becomes ``password: <file content, stripped>``."""
    if isinstance(data, list):
        return [resolve_secret_files(v, f"{key}[{i}]") for i, v in enumerate(data)]
    if not isinstance(data, dict):
        return data
    out: dict = {}
    for name, value in data.items():
        if isinstance(name, str) and name.endswith("_file") and is_secret_name(name[:-5]):
            out[name[:-5]] = _read_secret(_join(key, name), value)
        else:
            out[name] = resolve_secret_files(value, _join(key, str(name)))
    return out


def _read_secret(key: str, value: Any) -> str | None:
    if value in (None, ""):
        return None
    try:
        return Path(str(value)).expanduser().read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read secret file {str(value)!r}: {exc.strerror}") \
            from None


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
