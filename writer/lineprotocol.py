"""InfluxDB line protocol, built as strings (several times faster than influxdb-client's ``Point``).

Two dialects (docs/schema.md, "Names and text as stored"):

- ``EXACT`` (MQTT messages, HA events other than ``state_changed``): InfluxDB 1.x stores every
  name and string exactly as given. It unescapes only ``\\,`` ``\\ `` ``\\=`` (and ``\\"`` in
  measurements and field keys) in names, so a backslash is written as it is and only what would
  end the name is escaped; string values escape ``\\`` and ``"``, and a newline inside the quotes
  stays a newline.
- ``HA`` (``state_changed``): byte for byte what Home Assistant's ``influxdb`` integration sends
  through influxdb-python 5.3.1 (``make_line``): ``\\``, space, ``,``, ``=`` escaped and a newline
  written as ``\\n`` in names; ``\\``, ``"`` and newline escaped in strings. InfluxDB stores the
  backslashes of such names doubled and a newline as the two characters ``\\n``, as it does for HA.

Both: floats by ``repr`` (a field keeps one type for ever), tags sorted and empty tag values left
out (InfluxDB stores none), names InfluxDB cannot hold mapped by ``writer.names`` first. What no
rule can save raises ConversionError naming it.
"""

from __future__ import annotations

import re
from typing import Mapping

from ha_ingestor.errors import ConversionError
from ha_ingestor.memo import Memo
from writer import names

_MAX_CACHED = 100_000
_EXACT_NAME = str.maketrans({" ": "\\ ", ",": "\\,", "=": "\\="})
# field keys also escape '"' (InfluxDB unescapes it there; VictoriaMetrics misreads the value of
# a key with a bare quote)
_EXACT_KEY = str.maketrans({" ": "\\ ", ",": "\\,", "=": "\\=", '"': '\\"'})
_EXACT_SPECIAL = frozenset(" ,=")
_EXACT_KEY_SPECIAL = frozenset(' ,="')
_HA_NAME = str.maketrans({"\\": "\\\\", " ": "\\ ", ",": "\\,", "=": "\\=", "\n": "\\n"})
_HA_SPECIAL = frozenset("\\ ,=\n")
_EXACT_STRING = str.maketrans({"\\": "\\\\", '"': '\\"'})
_HA_STRING = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})
# InfluxDB checks a field set by skipping escape pairs ("\\x"): after an odd run of backslashes
# in a field key, a separator would be read as the end of the key
_ODD_BACKSLASHES_BEFORE_SEPARATOR = re.compile(r"(?<!\\)(?:\\\\)*\\[ ,=]")
_BLANK_START = ("\t", "\x00")      # InfluxDB skips these at the start of a field set
# InfluxDB 1.x stores a measurement with a backslash right before one of these, but unescapes
# its name twice on the way back: no query finds it again
_UNREADABLE_MEASUREMENT = re.compile(r'\\[, ="]')


def _refuse_exact(name: str, what: str) -> None:
    if not name:
        raise ConversionError(f"empty {what}: InfluxDB cannot store it", "name")
    if "\n" in name:
        raise ConversionError(f"{what} {name[:200]!r} holds a newline: InfluxDB cannot store it in "
                              "a name", "name")


def _exact(name: str) -> str:
    return name.translate(_EXACT_NAME) if not _EXACT_SPECIAL.isdisjoint(name) else name


def _ha(name: str) -> str:
    return name.translate(_HA_NAME) if not _HA_SPECIAL.isdisjoint(name) else name


# ---- EXACT --------------------------------------------------------------------------------------

def _refuse_unreadable(name: str) -> None:
    if "\\" in name and _UNREADABLE_MEASUREMENT.search(name):
        raise ConversionError(f"measurement {name[:200]!r} has a backslash before a space, ',', "
                              "'=' or '\"': InfluxDB 1.x would store it where no query finds it",
                              "name")


def _exact_measurement(name: str) -> str:
    _refuse_exact(name, "measurement")
    _refuse_unreadable(name)
    return _exact(names.stored_measurement[name])


def _exact_tag(name: str) -> str:
    if "\n" in name:
        raise ConversionError(f"tag value {name[:200]!r} holds a newline: InfluxDB cannot store "
                              "it in a name", "name")
    return _exact(names.stored_name(name))


def _exact_field_key(key: str) -> str:
    """``key`` is already the stored key (``names.stored_key``, made unique by the caller)."""
    _refuse_exact(key, "field name")
    if "\\" in key and _ODD_BACKSLASHES_BEFORE_SEPARATOR.search(key):
        raise ConversionError(f"field name {key[:200]!r} has a backslash before a space, ',' or "
                              "'=': InfluxDB cannot store it", "name")
    return key.translate(_EXACT_KEY) if not _EXACT_KEY_SPECIAL.isdisjoint(key) else key


# ---- HA -----------------------------------------------------------------------------------------

def _ha_measurement(name: str) -> str:
    if not name:
        raise ConversionError("empty measurement: InfluxDB cannot store it", "name")
    _refuse_unreadable(name)
    token = _ha(names.ha_stored_name(name))
    return "\\" + token if token.startswith(("#", "\t", "\x00")) else token


def _ha_tag(name: str) -> str:
    return _ha(names.ha_stored_name(name))


def _ha_field_key(key: str) -> str:
    if not key or key.endswith("\\"):
        raise ConversionError(f"field name {key!r} cannot be stored (writer.schema_ha maps it)",
                              "name")
    return _ha(key)


class Dialect:
    """How one kind of point spells its names and strings; every name is escaped once."""

    def __init__(self, name: str, measurement, tag, field_key, strings: dict):
        self.name = name
        self.measurement = Memo(measurement, _MAX_CACHED)
        self.tag = Memo(tag, _MAX_CACHED)
        self.field_key = Memo(field_key, _MAX_CACHED)
        self._strings = strings
        self.prefixes = Memo(self._prefix, _MAX_CACHED)

    def quote(self, value: str) -> str:
        if '"' in value or "\\" in value or "\n" in value:
            value = value.translate(self._strings)
        return f'"{value}"'

    def _prefix(self, key: tuple) -> str:
        measurement, tags = key
        parts = [self.measurement[measurement]]
        tag = self.tag
        for name, value in sorted(tags):
            if name and value:
                parts.append(f",{tag[name]}={tag[value]}")
        return "".join(parts)


EXACT = Dialect("exact", _exact_measurement, _exact_tag, _exact_field_key, _EXACT_STRING)
HA = Dialect("ha", _ha_measurement, _ha_tag, _ha_field_key, _HA_STRING)


def make_line(measurement: str, tags: Mapping[str, str], fields: Mapping[str, float | str | bool],
              time_ns: int, dialect: Dialect = EXACT) -> str:
    """One point as a line (without the trailing newline).

    Raises ConversionError when nothing is left to write (no fields), a float is not finite
    (InfluxDB rejects NaN and infinity) or a name cannot be stored."""
    prefix = dialect.prefixes[(measurement, tuple(tags.items()))]
    return f"{prefix} {make_fieldset(measurement, fields, dialect)} {int(time_ns)}"


def make_fieldset(measurement: str, fields: Mapping[str, float | str | bool],
                  dialect: Dialect = EXACT) -> str:
    """``key=value,...`` sorted by key; a key InfluxDB would lose its leading tab or NUL from
    (the first one) is not put first."""
    keys = sorted(fields)
    if not keys:
        raise ConversionError(f"point in {measurement!r} has no fields", "empty")
    if keys[0][:1] in _BLANK_START:
        keys = _blank_start_not_first(keys)
    escape = dialect.field_key
    parts = []
    for key in keys:
        value = fields[key]
        kind = type(value)
        if kind is float:
            if value - value != 0.0:               # NaN or infinite
                raise ConversionError(f"field {key!r} is {value!r}; InfluxDB accepts only "
                                      "finite numbers", "number")
            text = repr(value)
        elif kind is str:
            text = dialect.quote(value)
        elif kind is bool:
            text = "true" if value else "false"
        else:
            raise ConversionError(f"field {key!r}: values must be float, str or bool, got "
                                  f"{kind.__name__}", "malformed")
        parts.append(f"{escape[key]}={text}")
    return ",".join(parts)


def _blank_start_not_first(keys: list[str]) -> list[str]:
    for i, key in enumerate(keys):
        if key[:1] not in _BLANK_START:
            return [key] + keys[:i] + keys[i + 1:]
    raise ConversionError(f"every field name starts with a tab or NUL ({keys[0]!r}): InfluxDB "
                          "would drop that character from the first one", "name")
