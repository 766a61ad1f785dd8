"""``ha-ingestor import history``: HA's recorded state changes into the import queue.

Each recorded change becomes the ``state_changed`` envelope the HA collector would have stored
for it live (``time_fired`` = ``last_updated``; see ``collectors.homeassistant.backfill``), kind
``import``, so the writer converts it with the same code into the same point. The period is read
window by window (``import.window``) and, within a window, ``import.entities_per_request``
entities at a time: one request is one step of the job (``importer.job``); the next request is
on its way while a step is stored, so memory holds at most two answers whatever the period.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Iterator

from ha_ingestor.config import Config
from ha_ingestor.envelope import KIND_IMPORT, state_as_event
from ha_ingestor.lifecycle import StopFlag

from collectors.homeassistant.backfill import compressed_to_state
from importer import plan as p
from importer.ha_reader import HAReader
from importer.import_queue import ImportQueue
from importer.job import Job, Outcome, open_job, run_steps

log = logging.getLogger("import")

SAMPLED_WINDOWS = 3      # --dry-run: windows read to estimate the number of changes


@dataclass
class HistoryPlan:
    since: datetime
    until: datetime
    window: float
    per_request: int
    entities: list[str]

    def as_dict(self) -> dict:
        return {"since": self.since.isoformat(), "until": self.until.isoformat(),
                "window": self.window, "per_request": self.per_request,
                "entities": self.entities}

    @classmethod
    def from_dict(cls, data: dict) -> "HistoryPlan":
        return cls(datetime.fromisoformat(data["since"]), datetime.fromisoformat(data["until"]),
                   float(data["window"]), int(data["per_request"]), list(data["entities"]))

    def windows(self) -> list[tuple[datetime, datetime]]:
        return p.windows(self.since, self.until, self.window)

    def chunks(self) -> list[list[str]]:
        return list(p.chunks(self.entities, self.per_request))


def states_in_window(answer: dict, start: datetime, end: datetime) -> Iterator[dict]:
    """The HA states of a history answer whose ``last_updated`` lies in [start, end), as
    ``compressed_to_state`` writes them (HA's own formatting, at the microsecond)."""
    for entity_id, rows in (answer or {}).items():
        for row in rows if isinstance(rows, list) else ():
            if not isinstance(row, dict) or not isinstance(row.get("lu"), (int, float)):
                continue
            state = compressed_to_state(entity_id, row)
            if start <= datetime.fromisoformat(state["last_updated"]) < end:
                yield state


def sorted_states(answer: dict, start: datetime, end: datetime) -> Iterator[dict]:
    """``states_in_window`` by entity id, then time (the order of the job's keys)."""
    for entity_id in sorted(answer or {}):
        yield from sorted(states_in_window({entity_id: answer[entity_id]}, start, end),
                          key=lambda state: time_key(state["last_updated"]))


def time_key(iso: str) -> int:
    """A recorded time as integer microseconds since the epoch (exact, comparable)."""
    return p.epoch_us(datetime.fromisoformat(iso))


def read_window(reader: HAReader, entities: list[str], start: datetime, end: datetime) -> dict:
    return reader.request(p.history_query(entities, start, end)) or {}


def make_plan(config: Config, reader: HAReader, since: str, until: str | None,
              patterns: tuple[str, ...]) -> HistoryPlan:
    first, last = p.period(since, until)
    entities = p.select(patterns, reader.entity_ids())
    return HistoryPlan(first, last, config.imports.window, config.imports.entities_per_request,
                       entities)


def estimate(reader: HAReader, plan: HistoryPlan) -> tuple[int, int]:
    """(estimated changes, windows sampled): every entity in up to SAMPLED_WINDOWS windows
    spread over the period, scaled to all windows."""
    windows = plan.windows()
    picks = sorted({0, len(windows) // 2, len(windows) - 1})[:SAMPLED_WINDOWS]
    counted = 0
    for index in picks:
        start, end = windows[index]
        for chunk in plan.chunks():
            counted += sum(1 for _ in states_in_window(read_window(reader, chunk, start, end),
                                                       start, end))
    return round(counted * len(windows) / len(picks)), len(picks)


def run(config: Config, plan: HistoryPlan, command: dict, reader: HAReader, stop: StopFlag,
        say: Callable[[str], None]) -> Outcome:
    """Import (or continue importing) ``plan``; returns how far it got."""
    queue = ImportQueue(config, stop)
    try:
        job, stored = open_job(queue.producer, "history", command, plan.as_dict(), say)
        return _steps(HistoryPlan.from_dict(stored), job, queue, reader, stop)
    finally:
        queue.close()


def _steps(plan: HistoryPlan, job: Job, queue: ImportQueue, reader: HAReader,
           stop: StopFlag) -> Outcome:
    windows, chunks = plan.windows(), plan.chunks()

    def bounds(index: int) -> tuple[datetime, datetime]:
        return windows[index // len(chunks)]

    def ask(index: int):
        return reader.submit(p.history_query(chunks[index % len(chunks)], *bounds(index)))

    def read(index: int, answer: dict) -> Iterator[tuple[tuple, dict]]:
        for state in sorted_states(answer or {}, *bounds(index)):
            yield (state["entity_id"], time_key(state["last_updated"])), \
                state_as_event(state, KIND_IMPORT)
    return run_steps(job, len(windows) * len(chunks), ask, read, queue, stop, "import history")
