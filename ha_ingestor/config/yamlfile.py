"""Reading a YAML file safely, with Home Assistant's ``!secret`` and ``!env_var`` tags.

- ``!secret name`` and ``!env_var NAME [default words]`` are read as placeholders
  (``SecretRef``, ``EnvVarRef``) and resolved later, section by section: a command that needs
  only the ``queue:`` section never needs the collectors' secrets.
- Aliases are bounded: a document whose aliases would expand past ``MAX_NODES`` nodes, or that
  refers to itself, is refused before anything is built from it (a few lines of nested aliases
  otherwise expand to gigabytes once the config is walked).

``!secret`` is resolved as Home Assistant resolves it: from ``secrets.yaml`` in the folder of the
file that names it, then in each parent folder up to the configuration folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from ha_ingestor.errors import ConfigError

MAX_NODES = 100_000          # a large HA configuration has a few thousand
SECRETS_FILE = "secrets.yaml"


@dataclass(frozen=True)
class SecretRef:
    """``!secret name`` in ``file``; resolved from secrets.yaml files, never shown."""

    name: str
    file: str


@dataclass(frozen=True)
class EnvVarRef:
    """``!env_var NAME`` or ``!env_var NAME default words`` (HA: the default when unset)."""

    name: str
    default: str | None


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses alias bombs and recursive aliases."""

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            check_expansion(node, self.name)
        return node


class TagLoader(BoundedLoader):
    """BoundedLoader that reads ``!secret`` and ``!env_var`` as placeholders."""


def _secret(loader: yaml.SafeLoader, node: yaml.Node) -> SecretRef:
    name = loader.construct_scalar(node)
    if not name:
        raise yaml.constructor.ConstructorError(None, None, "!secret needs a name",
                                                node.start_mark)
    return SecretRef(str(name), str(loader.name))


def _env_var(loader: yaml.SafeLoader, node: yaml.Node) -> EnvVarRef:
    args = str(loader.construct_scalar(node)).split()
    if not args:
        raise yaml.constructor.ConstructorError(None, None, "!env_var needs a variable name",
                                                node.start_mark)
    return EnvVarRef(args[0], " ".join(args[1:]) if len(args) > 1 else None)


TagLoader.add_constructor("!secret", _secret)
TagLoader.add_constructor("!env_var", _env_var)


def check_expansion(root: yaml.Node, where: str, limit: int = MAX_NODES) -> None:
    """Refuse a node graph that expands past ``limit`` nodes or contains itself."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ConfigError(f"{where}: a YAML alias refers to a node that contains it "
                              f"(line {node.start_mark.line + 1}); recursive data is refused")
        open_nodes.add(key)
        total = 1
        children = (node.value if isinstance(node, yaml.SequenceNode) else
                    [n for pair in node.value for n in pair]
                    if isinstance(node, yaml.MappingNode) else [])
        for child in children:
            total += size(child)
            if total > limit:
                raise ConfigError(f"{where}: YAML aliases expand to more than {limit} values "
                                  f"(near line {node.start_mark.line + 1}); refused")
        open_nodes.discard(key)
        sizes[key] = total
        return total

    size(root)


def load(text: str, name: str, loader: type[yaml.SafeLoader] = TagLoader) -> Any:
    """Parse ``text`` (``name`` is the file, for errors and ``!secret``). Raises ConfigError."""
    instance = loader(text)
    instance.name = name
    try:
        return instance.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {name!r} is not valid YAML{_where(exc)}: "
                          f"{getattr(exc, 'problem', None) or exc}") from None
    finally:
        instance.dispose()


def _where(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""


class Secrets:
    """``secrets.yaml`` lookups as Home Assistant does them: from the naming file's folder up
    to ``config_dir``, first match wins; each secrets.yaml is read once."""

    def __init__(self, config_dir: Path):
        self.config_dir = Path(config_dir).resolve()
        self._files: dict[Path, dict] = {}

    def get(self, ref: SecretRef, key: str) -> Any:
        folder = Path(ref.file).resolve().parent
        searched = []
        while True:
            try:
                folder.relative_to(self.config_dir)
            except ValueError:
                break
            path = folder / SECRETS_FILE
            searched.append(str(path))
            secrets = self._read(path)
            if ref.name in secrets:
                return secrets[ref.name]
            folder = folder.parent
        raise ConfigError(f"{key}: secret {ref.name!r} is not defined in "
                          f"{' or '.join(searched) or SECRETS_FILE}")

    def _read(self, path: Path) -> dict:
        if path not in self._files:
            try:
                text = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                text = ""
            except OSError as exc:
                raise ConfigError(f"secrets file {str(path)!r} cannot be read: "
                                  f"{exc.strerror}") from None
            data = load(text, str(path), BoundedLoader) if text else {}
            if not isinstance(data, dict):
                raise ConfigError(f"secrets file {str(path)!r} must hold a mapping of names "
                                  f"to values")
            data.pop("logger", None)        # HA's own "logger: debug" switch, not a secret
            self._files[path] = data
        return self._files[path]


def resolve_refs(value: Any, secrets: Secrets, env: Mapping[str, str], key: str = "") -> Any:
    """Replace every placeholder under ``value`` by what it names. Errors name the dotted key
    and the secret or variable, never a value."""
    if isinstance(value, dict):
        return {k: resolve_refs(v, secrets, env, _join(key, k))
                for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_refs(v, secrets, env, f"{key}[{i}]")
                for i, v in enumerate(value)]
    if isinstance(value, SecretRef):
        return secrets.get(value, key)
    if isinstance(value, EnvVarRef):
        if value.name in env:
            return env[value.name]
        if value.default is not None:
            return value.default
        raise ConfigError(f"{key}: !env_var {value.name} is not set (and has no default)")
    return value


def _join(prefix: str, name: Any) -> str:
    return f"{prefix}.{name}" if prefix else str(name)
