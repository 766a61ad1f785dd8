"""``ha-ingestor import statistics``: HA's long-term statistics into the import queue.

``recorder/list_statistic_ids`` names every statistic and its unit; ``recorder/
statistics_during_period`` reads ``import.statistic_ids_per_request`` of them at a time over
``import.statistics_window`` (one request is one step of the job, ``importer.job``). HA returns
the values in the unit it displays the statistic in (``display_unit_of_measurement``: the
entity's unit when HA converts, else the unit stored), and that unit goes with each row. Rows
become points in ``writer.schema_statistics``'s schema (docs/import.md). HA's bounds are
start <= period start < end, so windows neither overlap nor leave a gap.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Iterator

from ha_ingestor.config import Config
from ha_ingestor.envelope import statistic_row
from ha_ingestor.lifecycle import StopFlag

from importer import plan as p
from importer.ha_reader import HAReader
from importer.import_queue import ImportQueue
from importer.job import Outcome, open_job, run_steps

TYPES = ["last_reset", "max", "mean", "min", "state", "sum"]
VALUES = ("mean", "min", "max", "sum", "state", "last_reset")


@dataclass
class StatisticsPlan:
    since: datetime
    until: datetime
    period: str
    window: float
    per_request: int
    statistics: dict[str, dict]         # statistic_id -> {"unit": .., "source": ..}

    def as_dict(self) -> dict:
        return {"since": self.since.isoformat(), "until": self.until.isoformat(),
                "period": self.period, "window": self.window, "per_request": self.per_request,
                "statistics": self.statistics}

    @classmethod
    def from_dict(cls, data: dict) -> "StatisticsPlan":
        return cls(datetime.fromisoformat(data["since"]), datetime.fromisoformat(data["until"]),
                   data["period"], float(data["window"]), int(data["per_request"]),
                   dict(data["statistics"]))

    def windows(self) -> list[tuple[datetime, datetime]]:
        return p.windows(self.since, self.until, self.window)

    def chunks(self) -> list[list[str]]:
        return list(p.chunks(sorted(self.statistics), self.per_request))


def make_plan(config: Config, reader: HAReader, since: str, until: str | None, period: str,
              patterns: tuple[str, ...]) -> StatisticsPlan:
    first, last = p.period(since, until)
    listed = {entry["statistic_id"]: entry
              for entry in reader.request({"type": "recorder/list_statistic_ids"}) or []
              if isinstance(entry, dict) and isinstance(entry.get("statistic_id"), str)}
    chosen = p.select(patterns, listed)
    statistics = {sid: {"unit": _unit(listed.get(sid, {})),
                        "source": listed.get(sid, {}).get("source")} for sid in chosen}
    return StatisticsPlan(first, last, period, config.imports.statistics_window,
                          config.imports.statistic_ids_per_request, statistics)


def _unit(entry: dict) -> str | None:
    return entry.get("display_unit_of_measurement") or \
        entry.get("statistics_unit_of_measurement") or None


def describe(plan: StatisticsPlan) -> str:
    requests = len(plan.windows()) * len(plan.chunks())
    shown = ", ".join(sorted(plan.statistics)[:20])
    more = f" and {len(plan.statistics) - 20} more" if len(plan.statistics) > 20 else ""
    return (f"{len(plan.statistics)} statistics ({plan.period}), {plan.since.isoformat()} to "
            f"{plan.until.isoformat()}: {requests} request(s)\n"
            f"statistics: {shown or 'none matched'}{more}")


def rows_of(answer: dict, plan: StatisticsPlan) -> Iterator[tuple[tuple, dict]]:
    """(key, envelope) of one answer, ``{statistic_id: [{start, end, mean, ...}, ...]}``, by
    statistic_id, then start (the order of the job's keys)."""
    for statistic_id in sorted(answer or {}):
        rows = answer[statistic_id]
        meta = plan.statistics.get(statistic_id, {})
        rows = [row for row in rows if isinstance(row, dict)
                and isinstance(row.get("start"), (int, float))] if isinstance(rows, list) else []
        for row in sorted(rows, key=lambda row: row["start"]):
            record = {"statistic_id": statistic_id, "period": plan.period,
                      "unit": meta.get("unit"), "source": meta.get("source"),
                      "start": row["start"]}
            record.update({name: row[name] for name in VALUES if row.get(name) is not None})
            yield (statistic_id, row["start"]), statistic_row(record)


def run(config: Config, plan: StatisticsPlan, command: dict, reader: HAReader, stop: StopFlag,
        say: Callable[[str], None]) -> Outcome:
    queue = ImportQueue(config, stop)
    try:
        job, stored = open_job(queue.producer, "statistics", command, plan.as_dict(), say)
        plan = StatisticsPlan.from_dict(stored)
        windows, chunks = plan.windows(), plan.chunks()

        def ask(index: int):
            start, end = windows[index // len(chunks)]
            return reader.submit({"type": "recorder/statistics_during_period",
                                  "start_time": start.isoformat(), "end_time": end.isoformat(),
                                  "statistic_ids": chunks[index % len(chunks)],
                                  "period": plan.period, "types": TYPES})
        return run_steps(job, len(windows) * len(chunks), ask,
                         lambda _index, answer: rows_of(answer, plan), queue, stop,
                         "import statistics")
    finally:
        queue.close()
