"""An import as a resumable job: its plan and how far it got, in the import queue's ``meta``.

The job's key is derived from the command as it was given (``import history --since 10d``), so
running the same command again after a crash, a SIGKILL or Ctrl-C continues that job: with the
times it resolved when it started (``10d`` is not re-read against a later "now"), the entities it
chose then, and from the first event not yet stored. A step is one request (a window of one chunk
of entities); its events come in the order of a key (entity or statistic, then time) and are
stored in batches, each committed in the same SQLite transaction as the checkpoint that names
the step and the key of its last event (``Producer.append(events, meta=...)``). After a crash
the step is read again and the events up to that key are skipped: no gap and nothing stored
twice, and memory holds one batch of events, however large the step.

A finished job is kept as finished; the same command afterwards starts it again from the
beginning (a second import of a period rewrites identical points, InfluxDB keeps one).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable

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
        self.state = {"command": self.command, "plan": plan, "done": 0, "after": None,
                      "finished": False}
        self.producer.set_meta(self.key, json.dumps(self.state))
        return plan

    @property
    def done(self) -> int:
        """Steps stored (the next step to read is this index)."""
        return int(self.state["done"]) if self.state else 0

    @property
    def after(self) -> tuple | None:
        """In step ``done``: the key of the last event stored (None: nothing of it yet)."""
        after = self.state.get("after") if self.state else None
        return tuple(after) if after is not None else None

    def checkpoint(self, done: int, after: tuple | None = None,
                   finished: bool = False) -> dict[str, str]:
        """The meta to commit with a batch: steps before ``done`` are stored, and of step
        ``done`` the events up to the key ``after``."""
        self.state = {**self.state, "done": done, "after": after, "finished": finished}
        return {self.key: json.dumps(self.state)}

    def mark(self, done: int, finished: bool = False) -> None:
        """A checkpoint with no batch to go with (the step's last events were stored)."""
        for key, value in self.checkpoint(done, None, finished).items():
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


Keyed = Iterable[tuple[tuple, dict]]       # (key, envelope), in key order


def run_steps(job: Job, total: int, ask: Callable[[int], Any],
              read: Callable[[int, Any], Keyed], queue, stop: StopFlag, what: str) -> Outcome:
    """Steps ``job.done`` .. ``total - 1``: ``ask(index)`` sends a step's request and returns
    its pending answer (``.result()``), ``read(index, answer)`` gives its envelopes with their
    keys, which ``queue`` stores in batches with checkpoints. The next step's request is sent
    before a step is stored, so HA answers while we store. Stops between steps when ``stop``
    is set."""
    resumed_at = job.done
    progress = Progress(what, total, resumed_at)
    pending = ask(resumed_at) if resumed_at < total else None
    try:
        for index in range(resumed_at, total):
            if stop.is_set():
                break
            answer = pending.result()
            pending = ask(index + 1) if index + 1 < total else None
            progress.step(_step(job, index, index + 1 == total, read(index, answer), queue))
            del answer
    finally:
        progress.close()
    if total == 0:
        job.mark(0, True)
    return Outcome(total, job.done, progress.rows, resumed_at, job.done == total)


def _step(job: Job, index: int, last: bool, keyed: Keyed, queue) -> int:
    """Store one step's events after the checkpoint's key; returns how many."""
    after = job.after if index == job.done else None
    batch: list[dict] = []
    stored = 0
    for key, envelope in keyed:
        if after is not None and key <= after:
            continue
        batch.append(envelope)
        if len(batch) == queue.batch_events:
            queue.append(batch, job.checkpoint(index, key))
            stored += len(batch)
            batch = []
    if batch:
        queue.append(batch, job.checkpoint(index + 1, None, last))
        stored += len(batch)
    else:
        job.mark(index + 1, last)
    return stored
