"""One long-term statistics row (``ha-ingestor import statistics``) → one point.

- measurement: ``schema.statistics.measurement`` if set, else the statistic's unit (as HA's
  influxdb integration names state measurements by unit), else
  ``schema.statistics.default_measurement``, else the statistic_id;
- tags: ``statistic_id``, ``domain`` and ``entity_id`` (the two parts of ``sensor.energy`` or of
  an external ``tibber:energy``, as HA's integration splits entity ids), ``period`` (5minute,
  hour, day), ``source`` (recorder, or the integration of an external statistic), and
  ``schema.statistics.tags``;
- fields: ``mean``, ``min``, ``max``, ``sum``, ``state`` (floats; those HA returns for the
  statistic), ``last_reset_str`` (ISO time, when HA has one);
- time: the start of the period.

The same row always gives the same line, so importing a period again rewrites identical points.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from ha_ingestor.config.schema import StatisticsSchema
from ha_ingestor.errors import ConversionError
from writer.lineprotocol import HA, make_line

FIELDS = ("mean", "min", "max", "sum", "state")


def split_statistic_id(statistic_id: str) -> tuple[str, str]:
    for separator in (".", ":"):
        if separator in statistic_id:
            domain, _, rest = statistic_id.partition(separator)
            return domain, rest
    return "", statistic_id


class StatisticsSchemaHA:
    def __init__(self, config: StatisticsSchema):
        self.config = config

    def to_line(self, row: dict[str, Any]) -> str:
        statistic_id = row["statistic_id"]
        if not isinstance(statistic_id, str) or not statistic_id:
            raise ConversionError(f"statistic_id must be a non-empty string, got "
                                  f"{statistic_id!r}")
        domain, object_id = split_statistic_id(statistic_id)
        tags = {"statistic_id": statistic_id, "domain": domain, "entity_id": object_id,
                "period": str(row.get("period") or ""), "source": str(row.get("source") or "")}
        tags.update(self.config.tags)
        fields: dict[str, float | str] = {}
        for name in FIELDS:
            value = row.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                fields[name] = float(value)
        if isinstance(row.get("last_reset"), (int, float)):
            fields["last_reset_str"] = _iso(row["last_reset"])
        return make_line(self._measurement(row, statistic_id), tags, fields,
                         _ms_to_ns(row["start"]), HA)

    def _measurement(self, row: dict, statistic_id: str) -> str:
        unit = row.get("unit")
        return (self.config.measurement or (unit if isinstance(unit, str) and unit else None)
                or self.config.default_measurement or statistic_id)


def _ms_to_ns(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConversionError(f"statistics start must be epoch milliseconds, got {value!r}")
    return round(value * 1000) * 1000          # HA's starts are whole seconds


def _iso(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat()
