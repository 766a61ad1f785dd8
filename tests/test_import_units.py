"""The import's pieces without Home Assistant: times on the command line, windows, entity
selection, and the job's checkpoints against a real queue file (a crash inside a step)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from ha_ingestor import queue
from ha_ingestor.config import load_config
from ha_ingestor.errors import ConfigError
from ha_ingestor.lifecycle import StopFlag
from importer import plan
from importer.import_queue import ImportQueue
from importer.job import open_job, run_steps

NOW = datetime(2024, 3, 10, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("text, expected", [
    ("now", NOW),
    ("90m", NOW - timedelta(minutes=90)),
    ("10d", NOW - timedelta(days=10)),
    ("2w", NOW - timedelta(weeks=2)),
    ("2024-03-01", datetime(2024, 3, 1, tzinfo=timezone.utc)),
    ("2024-03-01T12:00:00+01:00", datetime(2024, 3, 1, 11, tzinfo=timezone.utc)),
    ("2024-03-01T12:00:00Z", datetime(2024, 3, 1, 12, tzinfo=timezone.utc)),
])
def test_when_accepts_iso_times_now_and_durations_before_now(text, expected):
    assert plan.parse_when("--since", text, NOW) == expected


def test_a_bad_time_or_an_empty_period_names_the_option():
    with pytest.raises(ConfigError, match=r"--since 'yesterday': expected an ISO date"):
        plan.parse_when("--since", "yesterday", NOW)
    with pytest.raises(ConfigError, match=r"--since .* must be before --until"):
        plan.period("2024-03-02", "2024-03-01", NOW)


def test_windows_cover_the_period_without_gap_or_overlap():
    since = datetime(2024, 3, 1, tzinfo=timezone.utc)
    pieces = plan.windows(since, since + timedelta(hours=2, minutes=30), 3600)
    assert [(a.hour, a.minute, b.hour, b.minute) for a, b in pieces] == \
        [(0, 0, 1, 0), (1, 0, 2, 0), (2, 0, 2, 30)]


def test_globs_match_known_ids_and_exact_ids_are_kept_as_given():
    known = ["sensor.a", "sensor.b", "light.kitchen"]
    assert plan.select([], known) == ["light.kitchen", "sensor.a", "sensor.b"]
    assert plan.select(["sensor.*", "switch.removed_since"], known) == \
        ["sensor.a", "sensor.b", "switch.removed_since"]


class Crash(Exception):
    """The process dying in the middle of a step."""


def keyed(step: int, count: int, crash_after: int | None = None):
    for i in range(count):
        if crash_after is not None and i == crash_after:
            raise Crash()
        yield (f"sensor.s{step}", i), {"src": "ha", "kind": "import", "step": step, "i": i}


class Answer:
    """A step's answer that is there at once (HA's part is not what this test is about)."""

    def __init__(self, index: int):
        self.index = index

    def result(self) -> int:
        return self.index


def test_a_step_interrupted_between_batches_continues_after_its_last_stored_event(tmp_path):
    config = load_config(None, {"HA_INGESTOR_QUEUE__DIR": str(tmp_path),
                                "HA_INGESTOR_QUEUE__BATCH_EVENTS": "4",
                                "HA_INGESTOR_HOMEASSISTANT__ENABLED": "false"})
    command = {"since": "1d"}
    sizes = [10, 0, 7]

    def run(crash_in: int | None) -> None:
        store = ImportQueue(config, StopFlag())
        try:
            job, _ = open_job(store.producer, "history", command, {"p": 1}, lambda _t: None)
            run_steps(job, len(sizes), Answer, lambda i, _answer: keyed(
                i, sizes[i], 6 if i == crash_in else None), store, StopFlag(), "test")
        finally:
            store.close()

    with pytest.raises(Crash):
        run(crash_in=0)                 # one batch of step 0 stored (4 events), then the crash
    assert len(queue.peek(tmp_path, "import", 100)) == 4      # the batch of 4, not the partial
    run(crash_in=None)
    stored = [(e["step"], e["i"]) for e in queue.peek(tmp_path, "import", 100)]
    assert stored == [(0, i) for i in range(10)] + [(2, i) for i in range(7)]
