"""``ha-ingestor verify``: per entity, the state changes HA's recorder holds against the points in
InfluxDB, window by window (``import.window``), and with ``--fill`` the missing ones queued.

A recorded change is *expected* when the writer's schema makes a point of it (the same
``StateChangedSchemaHA`` the writer converts with: excluded entities and states HA's integration
skips, such as ``unknown``, are not expected). It is *missing* when InfluxDB has no point of that
entity at its time, and a point of the entity in the period at a time no recorded change has is
*extra* (written live and purged from the recorder since, or excluded from the recorder).
Missing changes are named as ranges of consecutive recorded changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from ha_ingestor.config import Config
from ha_ingestor.envelope import KIND_IMPORT, state_as_event
from ha_ingestor.errors import EXIT_MISSING, EXIT_OK, ConversionError
from ha_ingestor.lifecycle import StopFlag
from writer.schema_ha import StateChangedSchemaHA, split_entity_id

from importer import plan as p
from importer.ha_reader import HAReader
from importer.history import read_window, states_in_window
from importer.import_queue import ImportQueue
from importer.influx_read import InfluxReader
from importer.progress import Progress

RANGES_KEPT = 100          # missing ranges listed per entity


@dataclass
class EntityCount:
    in_ha: int = 0
    in_influx: int = 0
    missing: int = 0
    extra: int = 0
    ranges: list[list[str]] = field(default_factory=list)   # [first, last] missing, ISO
    _open: bool = False

    def note(self, iso: str, is_missing: bool) -> None:
        """One expected change, in time order: extend or close the current missing range."""
        if is_missing:
            if self._open and self.ranges:
                self.ranges[-1][1] = iso
            elif len(self.ranges) < RANGES_KEPT:
                self.ranges.append([iso, iso])
            self._open = True
        else:
            self._open = False


@dataclass
class Report:
    since: datetime
    until: datetime
    entities: dict[str, EntityCount]
    filled: int | None = None
    complete: bool = True

    @property
    def missing(self) -> int:
        return sum(c.missing for c in self.entities.values())

    def exit_code(self) -> int:
        if self.filled is not None:
            return EXIT_OK if self.filled == self.missing and self.complete else EXIT_MISSING
        return EXIT_MISSING if self.missing or not self.complete else EXIT_OK

    def as_dict(self) -> dict:
        return {"since": self.since.isoformat(), "until": self.until.isoformat(),
                "complete": self.complete,
                "in_ha": sum(c.in_ha for c in self.entities.values()),
                "in_influxdb": sum(c.in_influx for c in self.entities.values()),
                "missing": self.missing,
                "extra": sum(c.extra for c in self.entities.values()),
                "filled": self.filled,
                "entities": {entity: {"in_ha": c.in_ha, "in_influxdb": c.in_influx,
                                      "missing": c.missing, "extra": c.extra,
                                      "missing_ranges": c.ranges}
                             for entity, c in sorted(self.entities.items())}}

    def table(self) -> str:
        width = max([len("entity")] + [len(e) for e in self.entities])
        lines = [f"verify {self.since.isoformat()} to {self.until.isoformat()}",
                 f"{'entity':<{width}} {'in HA':>8} {'in InfluxDB':>12} {'missing':>8} "
                 f"{'extra':>6}"]
        for entity, c in sorted(self.entities.items()):
            lines.append(f"{entity:<{width}} {c.in_ha:>8} {c.in_influx:>12} {c.missing:>8} "
                         f"{c.extra:>6}")
            for first, last in c.ranges:
                lines.append(f"  missing {first}" + (f" .. {last}" if last != first else ""))
        data = self.as_dict()
        lines.append(f"{'total':<{width}} {data['in_ha']:>8} {data['in_influxdb']:>12} "
                     f"{data['missing']:>8} {data['extra']:>6}")
        if not self.complete:
            lines.append("stopped before the end: the figures cover part of the period")
        if self.filled is not None:
            lines.append(f"queued {self.filled} missing change(s) for the writer (import.db); "
                         f"run verify again once it has written them")
        elif self.missing:
            lines.append(f"{self.missing} recorded change(s) missing from InfluxDB; "
                         f"`verify --fill` queues them")
        else:
            lines.append("nothing missing")
        return "\n".join(lines)


def run(config: Config, reader: HAReader, since: str, until: str | None,
        patterns: tuple[str, ...], fill: bool, stop: StopFlag) -> Report:
    first, last = p.period(since, until)
    entities = p.select(patterns, reader.entity_ids())
    checker = _Checker(config, reader, fill, stop)
    report = Report(first, last, {}, filled=0 if fill else None)
    windows = p.windows(first, last, config.imports.window)
    chunks = list(p.chunks(entities, config.imports.entities_per_request))
    progress = Progress("verify", len(windows) * len(chunks))
    try:
        for start, end in windows:
            for chunk in chunks:
                if stop.is_set():
                    report.complete = False
                    return report
                progress.step(checker.window(report, chunk, start, end))
    finally:
        progress.close()
        checker.close()
    return report


class _Checker:
    def __init__(self, config: Config, reader: HAReader, fill: bool, stop: StopFlag):
        self.reader = reader
        self.influx = InfluxReader(config.influxdb)
        self.schema = StateChangedSchemaHA(config.schema.state_changed, config.schema.limits)
        self.queue = ImportQueue(config, stop) if fill else None

    def window(self, report: Report, chunk: list[str], start: datetime, end: datetime) -> int:
        """Compare one window of one chunk; returns the recorded changes it held."""
        expected: dict[str, dict[int, dict]] = {entity: {} for entity in chunk}
        for state in states_in_window(read_window(self.reader, chunk, start, end), start, end):
            envelope = state_as_event(state, KIND_IMPORT)
            time_ns = self._expected_time(envelope)
            if time_ns is not None:
                expected.setdefault(state["entity_id"], {})[time_ns] = envelope
        pairs = {entity: pair for entity in expected if (pair := _split(entity))}
        present = self.influx.entity_times(list(set(pairs.values())), _ns(start), _ns(end))
        missing_envelopes = []
        for entity, changes in expected.items():
            if entity not in pairs:
                continue
            times = present.get(pairs[entity], set())
            if not changes and not times:
                continue
            count = report.entities.setdefault(entity, EntityCount())
            count.in_ha += len(changes)
            count.in_influx += len(times)
            count.extra += len(times - changes.keys())
            for time_ns in sorted(changes):
                is_missing = time_ns not in times
                count.note(changes[time_ns]["event"]["time_fired"], is_missing)
                if is_missing:
                    count.missing += 1
                    missing_envelopes.append(changes[time_ns])
        if self.queue is not None and missing_envelopes:
            self.queue.store(missing_envelopes)
            report.filled += len(missing_envelopes)
        return sum(len(changes) for changes in expected.values())

    def _expected_time(self, envelope: dict) -> int | None:
        try:
            point = self.schema.to_point(envelope["event"])
        except ConversionError:
            return _ns(datetime.fromisoformat(envelope["event"]["time_fired"]))
        return None if point is None else point[3]

    def close(self) -> None:
        if self.queue is not None:
            self.queue.close()


def _split(entity_id: str) -> tuple[str, str] | None:
    try:
        return split_entity_id(entity_id)
    except ValueError:                 # not an entity id (given by hand): nothing to compare
        return None


def _ns(moment: datetime) -> int:
    return p.epoch_us(moment) * 1000
