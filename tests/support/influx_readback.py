"""Everything a database holds, point by point, read back through InfluxQL the way a user would.

``SELECT *`` answers with every field key of a measurement as a column of every row, which does
not scale to thousands of generated field names. So the reader asks ``SHOW FIELD KEYS`` and then,
per measurement and field key, ``SELECT "<key>"::field FROM "<measurement>" GROUP BY *`` (rows
only where that field is set), many statements per request, and puts the points together:
``{(measurement, ((tag, value), ...), time_ns): {field: value}}``. Names are quoted for InfluxQL
(backslash and double quote escaped). InfluxQL cannot quote a name holding a NUL (it reads it as
the end of the query), a carriage return or a newline: such fields are read with ``SELECT *`` and
such measurements through a regular expression with ``.`` for those characters.
"""

from __future__ import annotations

import re

STATEMENTS_PER_REQUEST = 200
FIELDS_PER_STATEMENT = 50       # one scan of a measurement's series serves this many field keys
UNQUOTABLE = frozenset("\x00\r\n")

PointKey = tuple[str, tuple[tuple[str, str], ...], int]


def quote_ident(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def field_keys(server, db: str) -> list[tuple[str, str]]:
    """(measurement, field key) of every field in ``db``."""
    result = server._raw_query("SHOW FIELD KEYS", db)
    pairs = []
    for series in result["results"][0].get("series", []):
        for key, _kind in series.get("values", []):
            pairs.append((series["name"], key))
    return pairs


def regex_for(name: str) -> str:
    """An InfluxQL regular expression matching ``name`` (what cannot be quoted matched by
    ``.``)."""
    body = "".join("." if ch in UNQUOTABLE else "\\/" if ch == "/" else re.escape(ch)
                   for ch in name)
    return f"/^{body}$/"


def statements(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(measurement, statement): the measurement's field keys, a few dozen per statement, or
    ``SELECT *`` where a name cannot be quoted."""
    keys: dict[str, list[str]] = {}
    whole = set()
    for measurement, key in pairs:
        if not UNQUOTABLE.isdisjoint(measurement + key):
            whole.add(measurement)
        else:
            keys.setdefault(measurement, []).append(key)
    out = []
    for measurement, names in keys.items():
        if measurement in whole:
            continue
        for start in range(0, len(names), FIELDS_PER_STATEMENT):
            columns = ",".join(f"{quote_ident(k)}::field"
                               for k in names[start:start + FIELDS_PER_STATEMENT])
            out.append((measurement, f"SELECT {columns} FROM {quote_ident(measurement)} "
                                     "GROUP BY *"))
    for measurement in sorted(whole):
        source = regex_for(measurement) if not UNQUOTABLE.isdisjoint(measurement) \
            else quote_ident(measurement)
        out.append((measurement, f"SELECT * FROM {source} GROUP BY *"))
    return out


def read_points(server, db: str) -> dict[PointKey, dict[str, object]]:
    """Every point in ``db`` (tags with empty values are not tags: InfluxDB stores none)."""
    todo = statements(field_keys(server, db))
    points: dict[PointKey, dict[str, object]] = {}
    for start in range(0, len(todo), STATEMENTS_PER_REQUEST):
        chunk = todo[start:start + STATEMENTS_PER_REQUEST]
        result = server._raw_query(";".join(sql for _, sql in chunk), db)
        for (measurement, _), statement in zip(chunk, result["results"]):
            for series in statement.get("series", []):
                if series["name"] != measurement:
                    continue
                tags = tuple(sorted((k, v) for k, v in (series.get("tags") or {}).items() if v))
                for row in series.get("values", []):
                    found = dict(zip(series["columns"], row))
                    time_ns = found.pop("time")
                    found = {k: v for k, v in found.items() if v is not None}
                    if found:
                        points.setdefault((measurement, tags, time_ns), {}).update(found)
    return points
