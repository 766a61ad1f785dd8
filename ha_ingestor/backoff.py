"""The one backoff used by every reconnect and retry loop."""

from __future__ import annotations

import random


def compute_backoff(attempt: int, base: float = 0.5, factor: float = 2.0, cap: float = 30.0,
                    jitter: float = 0.2) -> float:
    """Delay in seconds before retry number ``attempt`` (1-based): ``base * factor**(attempt-1)``,
    capped at ``cap``, then spread by +/- ``jitter`` (a fraction) so that many clients do not retry
    in lock step."""
    delay = min(cap, base * factor ** max(0, attempt - 1))
    if jitter:
        delay *= 1.0 + random.uniform(-jitter, jitter)
    return max(0.0, min(delay, cap))


class Backoff:
    """Stateful wrapper: ``next_delay()`` after a failure, ``reset()`` after a success."""

    def __init__(self, base: float = 0.5, factor: float = 2.0, cap: float = 30.0,
                 jitter: float = 0.2):
        self.base, self.factor, self.cap, self.jitter = base, factor, cap, jitter
        self.attempts = 0

    def next_delay(self, at_least: float | None = None) -> float:
        """Count one more failure and return how long to wait. ``at_least`` honours a server's
        ``Retry-After``."""
        self.attempts += 1
        delay = compute_backoff(self.attempts, self.base, self.factor, self.cap, self.jitter)
        if at_least is not None:
            delay = max(delay, at_least)
        return delay

    def reset(self) -> None:
        self.attempts = 0
