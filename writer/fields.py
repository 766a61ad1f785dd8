"""Turning decoded JSON into fields whose InfluxDB type never changes.

The rule, shared by HA events and MQTT payloads: a number (or a boolean, as 1.0/0.0) is a float
field ``key``; a string is a string field ``key_str``; a list is its JSON text in ``key_str``;
a mapping is flattened (``outer_inner``); null is left out. So ``key`` is always a float and
``key_str`` always a string, whatever a device sends next time.
"""

from __future__ import annotations

import json
import math
from typing import Any


def add_value(fields: dict[str, float | str], key: str, value: Any, separator: str = "_",
              bools_as_float: bool = True) -> None:
    """Add ``value`` under ``key`` by the rule above (recursing into mappings)."""
    kind = type(value)
    if kind is float or kind is int:
        number = _finite(value)
        if number is not None:
            fields[key] = number
    elif kind is str:
        fields[f"{key}_str"] = value
    elif kind is bool:
        if bools_as_float:
            fields[key] = 1.0 if value else 0.0
        else:
            fields[f"{key}_str"] = "true" if value else "false"
    elif kind is dict:
        prefix = f"{key}{separator}" if key else ""
        for inner, inner_value in value.items():
            add_value(fields, f"{prefix}{inner}", inner_value, separator, bools_as_float)
    elif kind is list:
        fields[f"{key}_str"] = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    elif value is not None:
        fields[f"{key}_str"] = str(value)


def _finite(value: int | float) -> float | None:
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def parse_number(text: str) -> float | None:
    """A finite float from plain text, or None (``nan``/``inf`` count as text)."""
    stripped = text.strip()
    if not stripped or len(stripped) > 64:
        return None
    try:
        number = float(stripped)
    except ValueError:
        return None
    return number if math.isfinite(number) else None
