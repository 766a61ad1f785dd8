"""The writer's side of the queue files: the consumer role of every source, each file opened
once it exists, and a full disk waited out instead of exiting.

The writer claims the consumer role of every queue file (``mqtt.db``, ``ha.db``, ``import.db``)
when it starts, before the files exist, so a second writer exits 4 at once (``queue/mqtt.db is
already used by the writer (pid …)``) instead of sharing a file with it. A queue operation the full filesystem refuses (taking,
acknowledging, dead-lettering, opening) is retried with the shared backoff, counted in
``ha_ingestor_queue_disk_full_total`` and logged; /readyz is 503 meanwhile. Nothing is lost:
an item not acknowledged stays in the queue and is written again.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, TypeVar

from ha_ingestor import metrics
from ha_ingestor.backoff import Backoff
from ha_ingestor.envelope import QUEUES
from ha_ingestor.errors import DiskFull, Stopping
from ha_ingestor.lifecycle import StopFlag
from ha_ingestor.queue import CONSUMER, Consumer, hold_role, queue_file

log = logging.getLogger("writer")
T = TypeVar("T")

NEW_FILE_CHECK_S = 1.0      # how often the writer looks for a queue file that did not exist yet
DISK_BACKOFF = dict(base=0.5, factor=2.0, cap=5.0, jitter=0.2)   # a retry costs nothing


class WriterQueues:
    """The consumers of the writer, by source, and the one place that waits for disk space."""

    def __init__(self, queue_dir: Path, stop: StopFlag,
                 opened: Callable[[str, Consumer], None] = lambda source, consumer: None):
        self.queue_dir = Path(queue_dir)
        self.stop = stop
        self.opened = opened                   # called with each file the writer opens
        self.claims = [hold_role(queue_dir, source, CONSUMER, "the writer") for source in QUEUES]
        self.consumers: dict[str, Consumer] = {}
        self.disk_full = False
        self.backoff = Backoff(**DISK_BACKOFF)
        self._checked_at = 0.0

    def open_new_files(self) -> None:
        """Open the files that appeared since the last look (at most every NEW_FILE_CHECK_S)."""
        now = time.monotonic()
        if now - self._checked_at < NEW_FILE_CHECK_S:
            return
        self._checked_at = now
        for source in QUEUES:
            if source in self.consumers or not queue_file(self.queue_dir, source).exists():
                continue
            try:
                self.consumers[source] = Consumer(self.queue_dir, source)
            except DiskFull as exc:            # opened at a later look
                self._disk_full_delay(source, "open", exc)
                continue
            log.info("reading queue %s", queue_file(self.queue_dir, source))
            self.opened(source, self.consumers[source])

    def call(self, source: str, operation: str, action: Callable[[], T]) -> T:
        """Run a queue operation; a full disk is waited out with the shared backoff, never a
        reason to exit. Raises Stopping when a stop is requested meanwhile."""
        while True:
            try:
                result = action()
            except DiskFull as exc:
                if self.stop.wait(self._disk_full_delay(source, operation, exc)):
                    raise Stopping() from None
                continue
            if self.disk_full:
                log.info("the queue files can be written again after %d attempts; resuming",
                         self.backoff.attempts)
                self.disk_full = False
                self.backoff.reset()
            return result

    def _disk_full_delay(self, source: str, operation: str, exc: DiskFull) -> float:
        metrics.QUEUE_DISK_FULL.labels(source=source, operation=operation).inc()
        self.disk_full = True
        delay = self.backoff.next_delay()
        if self.backoff.attempts == 1 or self.backoff.attempts % 10 == 0:
            log.error("%s; nothing is lost, retry %d in %.1f s: free space on the queue's "
                      "filesystem", exc, self.backoff.attempts, delay)
        return delay

    def close(self) -> None:
        for consumer in self.consumers.values():
            consumer.close()
        self.consumers.clear()
        for claim in self.claims:
            claim.release()
        self.claims = []
