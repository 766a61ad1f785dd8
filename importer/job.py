"""An import as a resumable job: its plan and how far it got, in the import queue's ``meta``.

The job's key is derived from the command as it was given (``import history --since 10d``), so
running the same command again after a crash, a SIGKILL or Ctrl-C continues that job: with the
times it resolved when it started (``10d`` is not re-read against a later "now"), the entities it
chose then, and from the first step not yet stored. A step is one request (a window of one chunk
of entities); the checkpoint that says it is done is written in the same SQLite transaction as
the last batch of its events (``Producer.append(events, meta=...)``), so after a crash every step
is either stored whole with its checkpoint or not at all: no gap and nothing stored twice.

A finished job is kept as finished; the same command afterwards starts it again from the
beginning (a second import of a period rewrites identical points, InfluxDB keeps one).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable

from ha_ingestor.lifecycle import StopFlag

from importer.progress import Progress

PREFIX = "import.job."


class Job:
    def __init__(self, producer, kind: str, command: dict[str, Any]):
        digest = hashlib.sha256(json.dumps(command, sort_keys=True).encode()).hexdigest()[:16]
        self.producer = producer
        self.key = f"{PREFIX}{kind}.{digest}"
        stored = producer.get_meta(self.key)
        self.state: dict[str, Any] | None = json.loads(stored) if stored else None
        self.command = command

    @property
    def resuming(self) -> bool:
        return bool(self.state) and not self.state.get("finished")

    def begin(self, plan: dict[str, Any]) -> dict[str, Any]:
        """The plan to follow: the stored one when resuming, else ``plan`` (recorded now)."""
        if self.resuming:
            return self.state["plan"]
        self.state = {"command": self.command, "plan": plan, "done": 0, "finished": False}
        self.producer.set_meta(self.key, json.dumps(self.state))
        return plan

    @property
    def done(self) -> int:
        """Steps stored (the next step to read is this index)."""
        return int(self.state["done"]) if self.state else 0

    def checkpoint(self, done: int, finished: bool = False) -> dict[str, str]:
        """The meta to commit with the last batch of step ``done - 1``."""
        self.state = {**self.state, "done": done, "finished": finished}
        return {self.key: json.dumps(self.state)}

    def mark(self, done: int, finished: bool = False) -> None:
        """The checkpoint for a step that stored nothing."""
        for key, value in self.checkpoint(done, finished).items():
            self.producer.set_meta(key, value)


def open_job(producer, kind: str, command: dict[str, Any], plan: dict[str, Any],
             say: Callable[[str], None]) -> tuple[Job, dict[str, Any]]:
    """The job of ``command`` and the plan to follow (the stored one when resuming)."""
    job = Job(producer, kind, command)
    resuming = job.resuming
    plan = job.begin(plan)
    if resuming:
        say(f"continuing the import stopped at step {job.done}")
    return job, plan


@dataclass
class Outcome:
    steps: int
    done: int
    rows: int
    resumed_at: int
    finished: bool


def run_steps(job: Job, total: int, fetch: Callable[[int], list[dict]], queue, stop: StopFlag,
              what: str) -> Outcome:
    """Steps ``job.done`` .. ``total - 1``: ``fetch(index)`` reads one step's envelopes, which
    ``queue`` stores with the step's checkpoint. Stops between steps when ``stop`` is set."""
    resumed_at = job.done
    progress = Progress(what, total, resumed_at)
    try:
        for index in range(resumed_at, total):
            if stop.is_set():
                break
            envelopes = fetch(index)
            finished = index + 1 == total
            if envelopes:
                queue.store(envelopes, job.checkpoint(index + 1, finished))
            else:
                job.mark(index + 1, finished)
            progress.step(len(envelopes))
    finally:
        progress.close()
    if total == 0:
        job.mark(0, True)
    return Outcome(total, job.done, progress.rows, resumed_at, job.done == total)
