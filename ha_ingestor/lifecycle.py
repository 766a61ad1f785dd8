"""Process lifecycle: signal handlers that only record the signal, and a stop flag loops poll."""

from __future__ import annotations

import os
import signal
import threading


class StopFlag:
    """Set by SIGTERM/SIGINT (first signal: graceful stop). A second signal exits at once.

    The handler only records the signal; the component's own loop notices ``is_set()`` and drains.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signals: list[int] = []

    def install(self, exit_code_on_second: int = 130) -> "StopFlag":
        self._second_exit = exit_code_on_second
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum, _frame) -> None:
        self.signals.append(signum)
        if len(self.signals) > 1:
            os._exit(self._second_exit)
        self._event.set()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep up to ``timeout`` seconds, waking early when a stop is requested."""
        return self._event.wait(timeout)
