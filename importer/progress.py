"""Progress of a long import: tqdm's bar (rate, ETA) on a terminal, otherwise a log line every
``LINE_EVERY_S`` with the same figures, so a container log or a pipe shows progress too."""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

log = logging.getLogger("import")

LINE_EVERY_S = 10.0


class Progress:
    def __init__(self, what: str, total: int, done: int = 0, stream: TextIO | None = None):
        self.what = what
        self.total = total
        self.done = done
        self.initial = done                  # steps a previous run of the job had stored
        self.rows = 0
        self.started = time.monotonic()
        self._said_at = self.started
        self._bar = None
        stream = stream or sys.stderr
        if stream.isatty():
            from tqdm import tqdm
            self._bar = tqdm(total=total, initial=done, desc=what, unit="step", file=stream,
                             dynamic_ncols=True)

    def step(self, rows: int) -> None:
        """One step (a request) stored, with ``rows`` events."""
        self.done += 1
        self.rows += rows
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(rows=self.rows, refresh=False)
            return
        now = time.monotonic()
        if now - self._said_at >= LINE_EVERY_S or self.done == self.total:
            self._said_at = now
            log.info("%s", self.line())

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.rows / elapsed
        left = self.total - self.done
        steps_rate = (self.done - self.initial) / elapsed
        eta = f"{left / steps_rate:.0f} s" if steps_rate > 0 else "?"
        return (f"{self.what}: {self.done}/{self.total} steps, {self.rows} rows, "
                f"{rate:.0f} rows/s, ETA {eta}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
