"""How fast a backlog drains, and when it will be empty: for ``queue status --watch`` and the
writer's progress display.

``DrainRate`` keeps (time, backlog) samples of the last ``window`` seconds; the rate is the fall
of the backlog over that window (events/s, negative while it grows), the ETA the backlog over
the rate. Over a window, not between two samples: a writer drains in batches, so two samples a
second apart may see no change at all.
"""

from __future__ import annotations

import time
from collections import deque


class DrainRate:
    def __init__(self, window: float = 30.0, clock=time.monotonic):
        self.window = window
        self.clock = clock
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, backlog: int, at: float | None = None) -> None:
        now = self.clock() if at is None else at
        self.samples.append((now, backlog))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window:
            self.samples.popleft()

    def rate(self) -> float | None:
        """Events per second the backlog fell by (None until two samples a moment apart)."""
        if len(self.samples) < 2:
            return None
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        if t1 - t0 < 0.5:
            return None
        return (b0 - b1) / (t1 - t0)

    def eta(self) -> float | None:
        """Seconds until empty at the current rate: 0 when empty, None when not draining."""
        if not self.samples:
            return None
        backlog = self.samples[-1][1]
        if backlog == 0:
            return 0.0
        rate = self.rate()
        return backlog / rate if rate and rate > 0 else None


def duration(seconds: float | None) -> str:
    """``45 s``, ``12 min 5 s``, ``3 h 20 min``, ``2 d 4 h``; ``-`` for None."""
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "min", 60),
                                      ("min", 60, "s", 1)):
        if seconds >= size:
            rest = (seconds % size) // sub_size
            return f"{seconds // size} {unit}" + (f" {rest} {sub}" if rest else "")
    return f"{seconds} s"


def thousands(number: float) -> str:
    """``412 000``: thin groups that read well in a terminal and a log."""
    return f"{round(number):,}".replace(",", " ")


def progress_text(backlog: int, rate: float | None) -> str:
    """``412 000 behind, draining 96 000/s, empty in about 4 s``."""
    if backlog == 0:
        return "queue empty"
    if rate is None:
        return f"{thousands(backlog)} behind, measuring the rate"
    if rate < 0:
        return f"{thousands(backlog)} behind, growing by {thousands(-rate)}/s"
    if rate == 0:
        return f"{thousands(backlog)} behind, not draining"
    return (f"{thousands(backlog)} behind, draining {thousands(rate)}/s, empty in about "
            f"{duration(backlog / rate)}")
