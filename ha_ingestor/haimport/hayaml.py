"""Home Assistant's configuration.yaml as Home Assistant reads it (``homeassistant/util/yaml``
and ``homeassistant/config.py``): ``!include``, ``!include_dir_list``, ``!include_dir_named``,
``!include_dir_merge_list``, ``!include_dir_merge_named``, ``!secret``, ``!env_var`` and
packages.

Differences on purpose: a ``!secret`` or ``!env_var`` value stays a ``Ref`` that remembers its
name (so the import can print a reference instead of the value), and aliases are bounded as in
HA Ingestor's own config.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from ha_ingestor.config import yamlfile
from ha_ingestor.errors import ConfigError

SECRETS = yamlfile.SECRETS_FILE


@dataclass(frozen=True)
class Ref:
    """A value that came from ``!secret name`` (kind ``secret``) or ``!env_var NAME`` (kind
    ``env``, with its default words), and the value it has here."""

    kind: str
    name: str
    value: Any
    default: str | None = None


def plain(value: Any) -> Any:
    """``value`` with every Ref replaced by what it stands for."""
    if isinstance(value, Ref):
        return value.value
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


class HALoader(yamlfile.BoundedLoader):
    """One file of an HA configuration; ``context`` carries the secrets and the environment."""

    context: "Context"


@dataclass
class Context:
    secrets: yamlfile.Secrets
    env: Mapping[str, str]


def load_file(path: Path | str, context: Context) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {str(path)!r}: {exc}") from None
    loader = HALoader(text)
    loader.name = str(path)
    loader.context = context
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigError(f"{str(path)!r} is not valid YAML: {exc}") from None
    finally:
        loader.dispose()


def load_configuration(path: Path | str, env: Mapping[str, str]) -> dict:
    """configuration.yaml with its includes and tags, packages merged in. Raises ConfigError."""
    path = Path(path)
    context = Context(yamlfile.Secrets(path.resolve().parent), env)
    try:
        config = load_file(path, context)
    except FileNotFoundError:
        raise ConfigError(f"{str(path)!r} not found") from None
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ConfigError(f"{str(path)!r} must hold a mapping of integrations")
    return config


def _argument(loader: HALoader, node: yaml.Node) -> str:
    if not node.value:
        raise ConfigError(f"{node.start_mark}: {node.tag} needs an argument")
    return str(node.value)


def _beside(loader: HALoader, node: yaml.Node) -> str:
    return os.path.join(os.path.dirname(loader.name), _argument(loader, node))


def _include(loader: HALoader, node: yaml.Node) -> Any:
    fname = _beside(loader, node)
    try:
        loaded = load_file(fname, loader.context)
    except FileNotFoundError:
        raise ConfigError(f"{node.start_mark}: Unable to read file {fname}") from None
    return {} if loaded is None else loaded


def _find_files(directory: str, pattern: str = "*.yaml"):
    """HA's order: os.walk top-down, hidden folders and files skipped, files sorted per
    folder."""
    for root, dirs, files in os.walk(directory, topdown=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for basename in sorted(files):
            if not basename.startswith(".") and fnmatch.fnmatch(basename, pattern) \
                    and basename != SECRETS:
                yield os.path.join(root, basename)


def _loaded(loader: HALoader, node: yaml.Node):
    """(file name, its content) for every YAML file of the folder an ``!include_dir_*`` names,
    in Home Assistant's order."""
    for fname in _find_files(_beside(loader, node)):
        yield fname, load_file(fname, loader.context)


def _include_dir_named(loader: HALoader, node: yaml.Node) -> dict:
    return {os.path.splitext(os.path.basename(fname))[0]: {} if loaded is None else loaded
            for fname, loaded in _loaded(loader, node)}


def _include_dir_merge_named(loader: HALoader, node: yaml.Node) -> dict:
    mapping: dict = {}
    for _fname, loaded in _loaded(loader, node):
        if isinstance(loaded, dict):
            mapping.update(loaded)
    return mapping


def _include_dir_list(loader: HALoader, node: yaml.Node) -> list:
    return [loaded for _fname, loaded in _loaded(loader, node) if loaded is not None]


def _include_dir_merge_list(loader: HALoader, node: yaml.Node) -> list:
    merged: list = []
    for _fname, loaded in _loaded(loader, node):
        if isinstance(loaded, list):
            merged.extend(loaded)
    return merged


def _secret(loader: HALoader, node: yaml.Node) -> Ref:
    ref = yamlfile.SecretRef(str(node.value), loader.name)
    return Ref("secret", ref.name, loader.context.secrets.get(ref, f"!secret {ref.name}"))


def _env_var(loader: HALoader, node: yaml.Node) -> Ref:
    args = str(node.value).split()
    if not args:
        raise ConfigError(f"{node.start_mark}: !env_var needs a variable name")
    default = " ".join(args[1:]) if len(args) > 1 else None
    env = loader.context.env
    if args[0] in env:
        return Ref("env", args[0], env[args[0]], default)
    if default is not None:
        return Ref("env", args[0], default, default)
    raise ConfigError(f"!env_var {args[0]} is not set (and has no default); Home Assistant "
                      f"refuses the configuration too")


def _opaque(loader: HALoader, node: yaml.Node) -> Any:
    """Tags the influxdb block never uses (``!input`` of blueprints): kept as text."""
    return str(getattr(node, "value", ""))


for _tag, _constructor in (("!include", _include), ("!include_dir_named", _include_dir_named),
                           ("!include_dir_merge_named", _include_dir_merge_named),
                           ("!include_dir_list", _include_dir_list),
                           ("!include_dir_merge_list", _include_dir_merge_list),
                           ("!secret", _secret), ("!env_var", _env_var), ("!input", _opaque)):
    HALoader.add_constructor(_tag, _constructor)
