"""Decoded JSON → fields whose InfluxDB type never changes (MQTT payloads, HA event data).

The rule: a number (or a boolean, as 1.0/0.0) is a float field ``key``; a string is a string field
``key_str``; a list is its compact JSON text in ``key_str``; a mapping is flattened
(``outer_inner``); null is left out. So ``key`` is always a float and ``key_str`` always a string,
whatever a device sends next time. A JSON number a 64-bit float cannot hold (``NaN``,
``Infinity``, ``1e400``, an integer beyond 1.8e308) is its JSON text in ``key_str``.

Names: a field name is stored by ``writer.names`` (``time`` → ``time_``, a trailing backslash gets
``_``); when two keys end up with the same field name (``{"a_b": 1, "a": {"b": 2}}``, or ``a`` text
and ``a_str``), the later one gets ``_`` appended until it is unused, as Home Assistant does.

Limits (``schema.limits``): nesting deeper than ``max_depth``, more than ``max_fields`` fields or a
string longer than ``max_string_bytes`` make the event a dead letter (ConversionError, kind
``limit``). Keys listed in ``secret_keys`` (any depth, any case) are not written; ``withheld``
counts them.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from ha_ingestor.config.schema import SchemaLimits as Limits
from ha_ingestor.errors import ConversionError
from ha_ingestor.memo import Memo
from writer.names import stored_key

_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")
_ASCII_SPACE = " \t\r\n\f\v"


class NumberText(str):
    """A JSON number no finite float can hold, as its text."""


class _NeedsNumberText(Exception):
    """A non-finite float came out of a plain parse: parse again keeping the numbers' text."""


class Flattener:
    """The rule above for one kind of event. ``fields(value)`` → (fields, secrets withheld)."""

    def __init__(self, limits: Limits, separator: str = "_", bools_as_float: bool = True,
                 secret_keys: tuple[str, ...] = ()):
        self.limits = limits
        self.separator = separator
        self.bools_as_float = bools_as_float
        secret = frozenset(k.lower() for k in secret_keys)
        self.secret = Memo(lambda key: key.lower() in secret, 100_000) if secret else None

    def fields(self, value: Any, key: str | None = None, into: dict | None = None,
               exact: bool = False, skip_text: tuple[str, ...] = ()
               ) -> tuple[dict[str, float | str], int]:
        """Fields of ``value`` (a mapping is flattened from the top when ``key`` is None),
        added to ``into``. ``exact``: numbers may be NumberText (a parse that kept their text).
        ``skip_text``: top-level keys left out when their value is text (written as tags)."""
        state = _State(into if into is not None else {}, self, exact, skip_text)
        state.add(key, value, 0)
        if len(state.fields) > self.limits.max_fields:
            raise ConversionError(f"more than schema.limits.max_fields "
                                  f"({self.limits.max_fields}) fields", "limit")
        return state.fields, state.withheld


class _State:
    __slots__ = ("fields", "withheld", "rule", "short_text", "exact", "skip_text")

    def __init__(self, fields: dict, rule: Flattener, exact: bool, skip_text: tuple):
        self.fields = fields
        self.withheld = 0
        self.rule = rule
        self.exact = exact
        self.skip_text = skip_text
        self.short_text = rule.limits.max_string_bytes // 4   # shorter text is within it

    def add(self, key: str | None, value: Any, depth: int) -> None:
        kind = type(value)
        if kind is float:
            if value - value != 0.0:           # NaN or infinite: keep the text
                raise _NeedsNumberText()
            self.put(key, value)
        elif kind is str:
            self.put_text(key, value)
        elif kind is int:
            self.put_int(key, value)
        elif kind is dict:
            self.add_mapping(key, value, depth)
        elif kind is bool:
            if self.rule.bools_as_float:
                self.put(key, 1.0 if value else 0.0)
            else:
                self.put_text(key, "true" if value else "false")
        elif kind is list:
            self.put_list(key, value, depth)
        elif kind is NumberText:
            self.put_text(key, str(value))
        elif value is not None:
            self.put_text(key, str(value))

    def add_mapping(self, key: str | None, value: dict, depth: int) -> None:
        if depth >= self.rule.limits.max_depth:
            raise _too_deep(self.rule.limits.max_depth, key)
        prefix = "" if key is None else key + self.rule.separator
        secret, fields, short_text = self.rule.secret, self.fields, self.short_text
        skip = self.skip_text if depth == 0 else ()
        for inner, item in value.items():
            if secret is not None and secret[inner]:
                self.withheld += 1
                continue
            name, kind = prefix + inner, type(item)
            if skip and kind is str and inner in skip:
                continue
            # the usual values without a call (sensor payloads are flat numbers and text)
            if kind is float and item - item == 0.0:
                stored = stored_key[name]
            elif kind is int and -_FLOAT_INT < item < _FLOAT_INT:
                item = float(item)
                stored = stored_key[name]
            elif kind is str and len(item) <= short_text:
                stored = stored_key[name + "_str"]
            elif kind is dict:
                self.add_mapping(name, item, depth + 1)
                continue
            else:
                self.add(name, item, depth + 1)
                continue
            while stored in fields:
                stored += "_"
            fields[stored] = item

    def put_int(self, key: str | None, value: int) -> None:
        try:
            self.put(key, float(value))
        except OverflowError:                  # beyond 1.8e308: the digits, as text
            self.put_text(key, str(value))

    def put_list(self, key: str | None, value: list, depth: int) -> None:
        limit = self.rule.limits.max_depth
        if _list_depth(value, limit - depth) + depth > limit:
            raise _too_deep(limit, key)
        self.put_text(key, _LIST_TEXT(_plain(value) if self.exact else value))

    def put_text(self, key: str | None, value: str) -> None:
        limit = self.rule.limits.max_string_bytes
        if len(value) * 4 > limit and len(value.encode("utf-8", "surrogatepass")) > limit:
            raise ConversionError(f"text of {_label(key)} is longer than schema.limits."
                                  f"max_string_bytes ({limit} bytes)", "limit")
        self.put(f"{key or ''}_str", value)

    def put(self, key: str | None, value: float | str) -> None:
        fields = self.fields
        name = stored_key[key if key is not None else ""]
        while name in fields:
            name += "_"
        fields[name] = value


def _list_depth(value: Any, budget: int) -> int:
    """Nesting depth of a list (1 for a flat list), counted up to ``budget`` + 1."""
    deepest = 1
    for item in value:
        if type(item) in (list, dict):
            if budget <= 1:
                return budget + 1
            inner = item.values() if type(item) is dict else item
            deepest = max(deepest, 1 + _list_depth(list(inner), budget - 1))
            if deepest > budget:
                return deepest
    return deepest


_FLOAT_INT = 2**1000          # integers well inside a float's range convert without a check
_LIST_TEXT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _plain(value: Any) -> Any:
    """A list as Python's json module writes it, also after a parse that kept numbers' text:
    ``NaN``, ``Infinity``, ``-Infinity`` (``1e400`` reads ``Infinity``)."""
    if type(value) is NumberText:
        return float(value)
    if type(value) is list:
        return [_plain(item) for item in value]
    if type(value) is dict:
        return {k: _plain(v) for k, v in value.items()}
    return value


def _too_deep(limit: int, key: str | None) -> ConversionError:
    return ConversionError(f"JSON nested deeper than schema.limits.max_depth ({limit} levels) "
                           f"at {_label(key)}", "limit")


def _label(key: str | None) -> str:
    return "the top level" if key is None else repr(key[:200])


def parse_json(text: str) -> Any:
    """JSON → Python. Raises ValueError (not JSON) or ConversionError (nested too deep for the
    parser itself)."""
    return _loads(text, exact_numbers=False)


def flatten_json(text: str, data: Any, rule: Flattener, key: str | None = None
                 ) -> tuple[dict[str, float | str], int]:
    """Fields of ``data``, the document ``text`` parsed by ``parse_json``; parsed again keeping
    the text of numbers no float can hold when one shows up (rare, so the common case stays
    fast)."""
    try:
        return rule.fields(data, key)
    except _NeedsNumberText:
        return rule.fields(_loads(text, exact_numbers=True), key, exact=True)


def flatten_value(value: Any, rule: Flattener, key: str | None = None,
                  into: dict | None = None, skip_text: tuple[str, ...] = ()
                  ) -> tuple[dict[str, float | str], int]:
    """Fields of already decoded JSON (HA event data); a non-finite float is written as text."""
    try:
        return rule.fields(value, key, dict(into) if into else None, skip_text=skip_text)
    except _NeedsNumberText:
        return rule.fields(_text_for_non_finite(value), key, dict(into) if into else None,
                           skip_text=skip_text)


def _text_for_non_finite(value: Any) -> Any:
    if type(value) is float and not math.isfinite(value):
        return NumberText(json.dumps(value))
    if type(value) is dict:
        return {k: _text_for_non_finite(v) for k, v in value.items()}
    return value


def _loads(text: str, exact_numbers: bool) -> Any:
    """JSON → Python. Raises ValueError (not JSON) or ConversionError (nested too deep for the
    parser itself)."""
    try:
        if exact_numbers:
            return json.loads(text, parse_float=_number, parse_int=_integer,
                              parse_constant=NumberText)
        try:
            return json.loads(text)
        except ValueError as exc:              # an integer of more than 4300 digits
            if "integer string conversion" not in str(exc):
                raise
            return json.loads(text, parse_int=_integer)
    except RecursionError:
        raise ConversionError("JSON nested too deeply to parse (schema.limits.max_depth "
                              "documents the limit)", "limit") from None


def _number(text: str) -> float | NumberText:
    number = float(text)
    return number if math.isfinite(number) else NumberText(text)


def _integer(text: str) -> int | NumberText:
    """Python converts at most 4300 digits to an int; longer ones keep their text."""
    return int(text) if len(text) <= 4300 else NumberText(text)


def parse_number(text: str) -> float | None:
    """A finite float from a decimal number in plain text (ASCII digits, optional sign, point
    and exponent, surrounding whitespace ignored); None for anything else."""
    stripped = text.strip(_ASCII_SPACE)
    if not (stripped.isascii() and stripped.isdigit()) and not _DECIMAL.match(stripped):
        return None
    number = float(stripped)
    return number if math.isfinite(number) else None
