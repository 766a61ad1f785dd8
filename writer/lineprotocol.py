"""InfluxDB line protocol, built as strings (several times faster than influxdb-client's ``Point``).

Escaping is the one Home Assistant's ``influxdb`` integration gets from influxdb-python 5.3.1
(``make_line``), so a point we build for a state change is byte-for-byte what HA would send:

- measurement, tag keys, tag values and field keys: ``\\`` ``space`` ``,`` ``=`` are escaped with a
  backslash and a newline becomes the two characters ``\\n``;
- string field values are double-quoted with ``\\``, ``"`` and newline escaped;
- floats are written with ``repr`` (shortest exact form), never as integers, so a field keeps one
  type for ever;
- tags with an empty key or value are left out (InfluxDB rejects them); tags are sorted.

InfluxDB 1.x does not unescape ``\\\\`` in names, so a backslash in a measurement, tag or field
name is stored doubled, exactly as HA's integration stores it.
"""

from __future__ import annotations

import math
from typing import Mapping

_NAME_ESCAPES = str.maketrans({"\\": "\\\\", " ": "\\ ", ",": "\\,", "=": "\\=", "\n": "\\n"})
_NAME_SPECIAL = frozenset("\\ ,=\n")
_STRING_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})


def escape_name(name: str) -> str:
    """Escape a measurement, tag key, tag value or field key."""
    if _NAME_SPECIAL.isdisjoint(name):
        return name
    return name.translate(_NAME_ESCAPES)


def quote_string(value: str) -> str:
    """A string field value, quoted."""
    if '"' in value or "\\" in value or "\n" in value:
        value = value.translate(_STRING_ESCAPES)
    return f'"{value}"'


def format_field(value: float | str | bool) -> str:
    """One field value: floats by ``repr``, strings quoted, booleans as ``true``/``false``."""
    if type(value) is float:
        return repr(value)
    if type(value) is str:
        return quote_string(value)
    if type(value) is bool:
        return "true" if value else "false"
    raise TypeError(f"field values must be float, str or bool, got {type(value).__name__}")


def make_line(measurement: str, tags: Mapping[str, str], fields: Mapping[str, float | str | bool],
              time_ns: int) -> str:
    """One point as a line (without the trailing newline).

    Raises ValueError when nothing is left to write (no fields, empty measurement) or a float is
    not finite (InfluxDB rejects NaN and infinity)."""
    return f"{make_prefix(measurement, tags)} {make_fieldset(measurement, fields)} {int(time_ns)}"


def make_prefix(measurement: str, tags: Mapping[str, str]) -> str:
    """``measurement,tag=value,...`` (tags sorted, empty ones left out). Series repeat, so the
    result is cached per (measurement, tags)."""
    key = (measurement, tuple(tags.items()))
    prefix = _PREFIXES.get(key)
    if prefix is None:
        if not measurement:
            raise ValueError("empty measurement name")
        parts = [escape_name(measurement)]
        for name in sorted(tags):
            value = tags[name]
            if name and value:
                parts.append(f",{escape_name(name)}={escape_name(value)}")
        prefix = "".join(parts)
        if len(_PREFIXES) >= _MAX_CACHED:
            _PREFIXES.clear()
        _PREFIXES[key] = prefix
    return prefix


def make_fieldset(measurement: str, fields: Mapping[str, float | str | bool]) -> str:
    """``key=value,...`` sorted by key."""
    parts = []
    for key in sorted(fields):
        if not key:
            continue
        value = fields[key]
        if type(value) is float:
            if not math.isfinite(value):
                raise ValueError(f"field {key!r} is {value!r}; InfluxDB accepts only finite "
                                 "numbers")
            text = repr(value)
        else:
            text = format_field(value)
        escaped = _KEYS.get(key)
        if escaped is None:
            escaped = escape_name(key)
            if len(_KEYS) >= _MAX_CACHED:
                _KEYS.clear()
            _KEYS[key] = escaped
        parts.append(f"{escaped}={text}")
    if not parts:
        raise ValueError(f"point in {measurement!r} has no fields")
    return ",".join(parts)


_MAX_CACHED = 100_000
_PREFIXES: dict[tuple, str] = {}
_KEYS: dict[str, str] = {}
