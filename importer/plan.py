"""Times as the command line gives them, the windows an import reads, and which entities.

``--since``/``--until`` take an ISO 8601 date or time (``2024-03-01``, ``2024-03-01T12:00``,
``2024-03-01T12:00:00+01:00``; without a zone it is UTC), ``now``, or a duration before now
(``90m``, ``36h``, ``10d``, ``2w``).
"""

from __future__ import annotations

import fnmatch
import re
from datetime import datetime, timedelta, timezone
from typing import Iterable, Iterator

from ha_ingestor.errors import ConfigError

_AGO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
ONE_MICROSECOND = timedelta(microseconds=1)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def parse_when(option: str, text: str, now: datetime) -> datetime:
    """``text`` as an aware UTC datetime; ConfigError (exit 2) naming the option otherwise."""
    if text.strip().lower() == "now":
        return now
    match = _AGO.match(text.lower())
    if match:
        return now - timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{option} {text!r}: expected an ISO date or time (2024-03-01, "
                          f"2024-03-01T12:00:00+01:00), 'now', or a duration before now "
                          f"(90m, 36h, 10d, 2w)") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def period(since_text: str, until_text: str | None, now: datetime | None = None
           ) -> tuple[datetime, datetime]:
    now = now or datetime.now(timezone.utc)
    since = parse_when("--since", since_text, now)
    until = parse_when("--until", until_text or "now", now)
    if since >= until:
        raise ConfigError(f"--since ({since.isoformat()}) must be before --until "
                          f"({until.isoformat()})")
    return since, until


def windows(since: datetime, until: datetime, length: float) -> list[tuple[datetime, datetime]]:
    """[since, until) in pieces of ``length`` seconds, each half-open [start, end)."""
    step = timedelta(seconds=length)
    result = []
    cursor = since
    while cursor < until:
        end = min(cursor + step, until)
        result.append((cursor, end))
        cursor = end
    return result


def history_query(entity_ids: list[str], start: datetime, end: datetime) -> dict:
    """``history/history_during_period`` for the changes with start <= last_updated < end.

    The recorder's own bounds are strict on both sides, so the request starts one microsecond
    early and the answer is cut to the window by ``in_window`` (what the recorder returns at the
    start bound belongs to the previous window)."""
    return {"type": "history/history_during_period",
            "start_time": (start - ONE_MICROSECOND).isoformat(),
            "end_time": end.isoformat(), "entity_ids": entity_ids,
            "include_start_time_state": False, "significant_changes_only": False,
            "no_attributes": False, "minimal_response": False}


def select(patterns: Iterable[str], known: Iterable[str]) -> list[str]:
    """The ids ``patterns`` name: globs (``sensor.*``) match ``known`` ids; a pattern without a
    wildcard is taken as it is, known or not (an entity removed from HA still has history).
    No pattern: every known id."""
    known = sorted(set(known))
    patterns = list(patterns)
    if not patterns:
        return known
    chosen: set[str] = set()
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            chosen.update(fnmatch.filter(known, pattern))
        else:
            chosen.add(pattern)
    return sorted(chosen)


def chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def epoch_us(moment: datetime) -> int:
    """An aware datetime as integer microseconds since the epoch (exact, unlike a float)."""
    delta = moment - EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
