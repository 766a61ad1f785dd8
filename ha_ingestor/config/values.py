"""Parsers for config values. Each takes the dotted key, so every error names it and the bad value:
``mqtt.qos must be 0, 1 or 2, got 3``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

from ha_ingestor.config import yamlfile
from ha_ingestor.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, None: 1}


class EnvText(str):
    """A value given by an ``HA_INGESTOR_*`` environment variable: text, taken verbatim by string
    keys; list and mapping keys read it as a YAML flow list or mapping."""


def is_secret_name(name: str) -> bool:
    """Keys whose values are never shown: ``password``, ``token``, ``*_password``, ``*_token``."""
    return name in ("password", "token") or name.endswith(("_password", "_token"))


def fail(key: str, expected: str, value: Any) -> ConfigError:
    """The error for a bad value; a secret key's value is not repeated."""
    if is_secret_name(key.rsplit(".", 1)[-1].split("[", 1)[0]):
        return ConfigError(f"{key} must be {expected} (value not shown: it is a secret)")
    return ConfigError(f"{key} must be {expected}, got {value!r}")


def structured(key: str, value: Any) -> Any:
    """An environment override for a list or mapping key: ``[a, b]`` or ``{k: v}`` as YAML flow
    text; any other text is one item."""
    if not isinstance(value, EnvText) or not value.strip().startswith(("[", "{")):
        return value
    try:
        return yamlfile.load(str(value), key, yamlfile.BoundedLoader)
    except ConfigError:
        raise fail(key, "a YAML flow list or mapping such as [\"a\", \"b\"]", value) from None


def as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "no", "off", "0"):
        return False
    raise fail(key, "true or false", value)


def as_int(key: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise fail(key, "an integer", value)
    try:
        number = int(value)
    except ValueError:
        raise fail(key, "an integer", value) from None
    _check_range(key, number, value, minimum, maximum)
    return number


def as_port(key: str, value: Any, allow_zero: bool = False) -> int:
    return as_int(key, value, 0 if allow_zero else 1, 65535)


def as_str(key: str, value: Any, allow_empty: bool = False) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise fail(key, "a string", value)
    text = str(value)
    if not allow_empty and not text.strip():
        raise fail(key, "a non-empty string", value)
    return text


def as_opt_str(key: str, value: Any) -> str | None:
    return None if value is None or value == "" else as_str(key, value)


def as_secret(key: str, value: Any) -> str | None:
    """A password or token: any non-empty text, verbatim (spaces, ``#``, leading zeros kept)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise fail(key, "a string", value)
    return str(value)


def as_choice(key: str, value: Any, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    text = str(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) \
        else None
    if text not in choices:
        expected = ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 \
            else choices[0]
        raise fail(key, expected, value)
    return text


def as_duration(key: str, value: Any, minimum: float = 0.0) -> float:
    """Seconds from ``1.5``, ``"250ms"``, ``"10s"``, ``"2m"``, ``"1h"``, ``"7d"``."""
    if isinstance(value, bool):
        raise fail(key, 'a duration such as "500ms", "10s" or "2m"', value)
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise fail(key, 'a duration such as "500ms", "10s" or "2m"', value)
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds < minimum:
        raise fail(key, f"at least {minimum:g} s", value)
    return seconds


def as_size(key: str, value: Any, minimum: int = 1) -> int:
    """Bytes from ``1048576``, ``"500MB"``, ``"2GiB"``."""
    if isinstance(value, bool):
        raise fail(key, 'a size such as "500MB" or "2GiB"', value)
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise fail(key, 'a size such as "500MB" or "2GiB"', value)
        unit = match.group(2).lower() if match.group(2) else None
        size = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if size < minimum:
        raise fail(key, f"at least {minimum} bytes", value)
    return size


def as_str_list(key: str, value: Any) -> tuple[str, ...]:
    value = structured(key, value)
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise fail(key, "a list of strings", value)
    return tuple(as_str(f"{key}[{i}]", item) for i, item in enumerate(value))


def as_path(key: str, value: Any) -> Path:
    return Path(as_str(key, value)).expanduser()


def as_file(key: str, value: Any) -> str | None:
    """An optional path that must exist (CA files, client certificates)."""
    if value is None or value == "":
        return None
    path = as_path(key, value)
    if not path.is_file():
        raise ConfigError(f"{key}: file {str(path)!r} does not exist or is not a file")
    return str(path)


def as_mapping(key: str, value: Any) -> dict:
    value = structured(key, value)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise fail(key, "a mapping", value)
    return value


def _check_range(key, number, raw, minimum, maximum) -> None:
    if minimum is not None and maximum is not None and not minimum <= number <= maximum:
        raise fail(key, f"between {minimum} and {maximum}", raw)
    if minimum is not None and number < minimum:
        raise fail(key, f"at least {minimum}", raw)
    if maximum is not None and number > maximum:
        raise fail(key, f"at most {maximum}", raw)
