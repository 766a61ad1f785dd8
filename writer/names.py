"""Names InfluxDB 1.x cannot store as they were sent, and what is stored instead.

InfluxDB's line protocol parser reads a backslash before a separator as an escape whatever comes
before it, so no name can end in a backslash; it skips tabs and NULs at the start of a line and
reads a line that starts with ``#`` as a comment; it drops or refuses a field or tag called
``time``. Each rule below adds one character, and a name that already looks like the result gets
one more, so every mapping can be undone and two different names never meet (docs/schema.md,
"Names InfluxDB cannot store as sent"):

- a name that ends in a backslash, maybe followed by underscores, gets one more ``_``
  (``a\\`` → ``a\\_``, and ``a\\_`` → ``a\\__``);
- a field or tag key ``time``, maybe followed by underscores, gets one more ``_``
  (``time`` → ``time_``, ``time_`` → ``time__``);
- a measurement that starts with ``#``, a tab or a NUL, after any backslashes, gets one more
  backslash in front (``#/min`` → ``\\#/min``).

Names that no rule can save (a newline in a name, an empty name) are refused by the line encoder
with a ConversionError that names them.

``state_changed`` points are written as Home Assistant's integration writes them, which stores
every backslash of a name doubled; there only the lines HA would break are changed: a name that
ends in a backslash gets one ``_`` (``a\\`` is stored ``a\\\\_``, as HA stores ``a\\_``), a measurement
that starts with ``#``, a tab or a NUL gets a backslash in front, and the field names ``time`` and
the empty name count as taken, so HA's own rule for a taken name appends ``_``.
"""

from __future__ import annotations

import re

from ha_ingestor.memo import Memo

_ENDS_IN_BACKSLASH = re.compile(r"\\_*\Z")
_TIME = re.compile(r"time_*\Z")
_COMMENT_OR_BLANK_START = re.compile(r"\\*[#\t\x00]")
_MAX_CACHED = 100_000


def stored_name(name: str) -> str:
    """A measurement or tag value as stored: the trailing-backslash rule."""
    if "\\" in name and _ENDS_IN_BACKSLASH.search(name):
        return name + "_"
    return name


def _stored_key(key: str) -> str:
    if _TIME.match(key):
        return key + "_"
    return stored_name(key)


def _stored_measurement(name: str) -> str:
    name = stored_name(name)
    if _COMMENT_OR_BLANK_START.match(name):
        return "\\" + name
    return name


def ha_stored_name(name: str) -> str:
    """A name in a state_changed point: only a trailing backslash (which breaks HA's line)."""
    return name + "_" if name.endswith("\\") else name


#: field or tag key -> the key as stored (``stored_key[k]``: a dict lookup once seen)
stored_key = Memo(_stored_key, _MAX_CACHED)
#: measurement -> the measurement as stored
stored_measurement = Memo(_stored_measurement, _MAX_CACHED)
