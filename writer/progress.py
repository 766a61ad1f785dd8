"""Replay progress of the writer: how far behind it is, how fast it drains, when it will have
caught up. On a terminal a progress bar (tqdm) on stderr; otherwise (systemd, containers) a log
line each time the writer reads the queue status (every 5 s) while it is behind.

A replay starts when the backlog (ready + in flight, every queue) reaches ``threshold`` events
and ends when it falls below a tenth of that; both ends are logged once.
"""

from __future__ import annotations

import logging
import sys
import time

from ha_ingestor.drainrate import DrainRate, duration, progress_text, thousands

log = logging.getLogger("writer")

THRESHOLD = 5_000        # events behind before progress is shown
# tqdm's own rate would count our jumps between status reads; the postfix has the real one
BAR = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}] {postfix}"


class Progress:
    def __init__(self, threshold: int = THRESHOLD, tty: bool | None = None, clock=time.monotonic):
        self.threshold = threshold
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.clock = clock
        self.rate = DrainRate(window=30.0, clock=clock)
        self.started: float | None = None
        self.peak = 0
        self.bar = None

    def update(self, backlog: int) -> None:
        """The backlog now (events in every queue not yet written)."""
        self.rate.add(backlog)
        if self.started is None:
            if backlog >= self.threshold:
                self._start(backlog)
            return
        self.peak = max(self.peak, backlog)
        if backlog < self.threshold / 10:
            self._finish(backlog)
        elif self.bar is not None:
            self._draw(backlog)
        else:
            log.info("%s", progress_text(backlog, self.rate.rate()))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            self._logs.__exit__(None, None, None)

    def _start(self, backlog: int) -> None:
        self.started, self.peak = self.clock(), backlog
        log.info("%s events behind: replaying", thousands(backlog))
        if self.tty:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm
            self._logs = logging_redirect_tqdm()      # log lines above the bar, not through it
            self._logs.__enter__()
            self.bar = tqdm(total=backlog, unit=" events", unit_scale=True, file=sys.stderr,
                            dynamic_ncols=True, desc="replay", leave=False, bar_format=BAR)

    def _draw(self, backlog: int) -> None:
        self.bar.total = self.peak
        self.bar.n = self.peak - backlog
        self.bar.set_postfix_str(progress_text(backlog, self.rate.rate()), refresh=False)
        self.bar.refresh()

    def _finish(self, backlog: int) -> None:
        self.close()
        took = self.clock() - self.started
        log.info("caught up: %s events behind at most, replayed in %s; %s left",
                 thousands(self.peak), duration(took), thousands(backlog))
        self.started, self.peak = None, 0
