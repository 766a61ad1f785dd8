"""Where an import puts what it read: ``<queue.dir>/import.db``, the import's own queue file.

Only ``Producer`` of ``ha_ingestor.queue`` is used. One producer per file: a second import (or
``verify --fill``) on the same queue directory while one runs exits 4 with ``queue/import.db is
already used by ha-ingestor import (pid …)``. Events go in batches of
``queue.batch_events``, each with its step's checkpoint (``importer.job``). While the file is
at ``queue.max_bytes`` or the disk at its headroom (``QueueFull``, ``DiskFull``: the writer is
behind, or InfluxDB is away) the import waits for the writer to make room instead of failing:
HA's recorder keeps the rows meanwhile.
"""

from __future__ import annotations

import logging

from ha_ingestor.config import Config
from ha_ingestor.envelope import IMPORT
from ha_ingestor.errors import QueueFull
from ha_ingestor.lifecycle import StopFlag
from ha_ingestor.queue import Producer

from importer.ha_reader import Stopped

log = logging.getLogger("import")

FULL_WAIT_S = 1.0


class ImportQueue:
    def __init__(self, config: Config, stop: StopFlag):
        self.producer = Producer(config.queue.dir, IMPORT, config.queue.max_bytes,
                                 owner="ha-ingestor import")
        self.batch_events = config.queue.batch_events
        self.stop = stop
        self.appended = 0

    def store(self, envelopes: list[dict]) -> None:
        """Append ``envelopes`` (at least one) in batches."""
        for start in range(0, len(envelopes), self.batch_events):
            self.append(envelopes[start:start + self.batch_events])

    def append(self, batch: list[dict], meta: dict[str, str] | None = None) -> None:
        """One batch, with ``meta`` in the same transaction; waits while the file is full."""
        waiting = False
        while True:
            try:
                self.producer.append(batch, meta)
                self.appended += len(batch)
                if waiting:
                    log.info("the import queue has room again; continuing")
                return
            except QueueFull as exc:
                if not waiting:
                    log.warning("%s; waiting for the writer to make room", exc)
                    waiting = True
                if self.stop.wait(FULL_WAIT_S):
                    raise Stopped("stopped while the import queue was full") from None

    def close(self) -> None:
        self.producer.close()
