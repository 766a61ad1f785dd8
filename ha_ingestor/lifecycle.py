"""Process lifecycle: signal handlers that only record the signal, a stop flag loops poll, the
main loop's heartbeat, and dying with the supervisor.

Heartbeat: each process's main loop proves it still makes progress by ticking ``HEARTBEAT``
(``StopFlag.wait`` ticks while the main thread waits; busy loops tick themselves). ``/healthz``
answers 503 once the last tick is older than ``run.stall_timeout``, and under ``ha-ingestor run``
every tick also reaches the supervisor through a pipe, so a child that is stopped (SIGSTOP) or
stuck is killed and started again. Ticks from other threads do not count: a live background
thread must not hide a stuck main loop.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

HEARTBEAT_FD_ENV = "HA_INGESTOR_HEARTBEAT_FD"      # set by the supervisor for its children
PARENT_PID_ENV = "HA_INGESTOR_PARENT_PID"
SEND_EVERY_S = 1.0                                 # at most one byte a second to the supervisor
WAIT_SLICE_S = 1.0                                 # a long StopFlag.wait still ticks this often


class Heartbeat:
    def __init__(self, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.last = time.monotonic()
        self._fd: int | None = None
        self._sent = 0.0
        self._main = threading.main_thread()

    def tick(self) -> None:
        """The main loop made progress (no effect from other threads)."""
        if threading.current_thread() is not self._main:
            return
        now = time.monotonic()
        self.last = now
        if self._fd is not None and now - self._sent >= SEND_EVERY_S:
            self._sent = now
            self._send()

    def _send(self) -> None:
        try:
            os.write(self._fd, b".")
        except BlockingIOError:         # the supervisor is behind reading: it has our ticks
            pass
        except OSError:                 # the supervisor is gone
            self._fd = None

    def age(self) -> float:
        """Seconds since the last tick."""
        return time.monotonic() - self.last

    def stalled(self) -> bool:
        return self.age() > self.timeout

    def report_to_supervisor(self) -> None:
        """Send ticks to the pipe ``ha-ingestor run`` gave this process, if any."""
        fd = os.environ.get(HEARTBEAT_FD_ENV)
        if fd and fd.isdigit():
            self._fd = int(fd)
            os.set_blocking(self._fd, False)
            self._sent = 0.0
            self.tick()


HEARTBEAT = Heartbeat()


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
        """Sleep up to ``timeout`` seconds, waking early when a stop is requested. In the main
        thread the heartbeat ticks while it waits: waiting is what an idle main loop does."""
        if threading.current_thread() is not threading.main_thread():
            return self._event.wait(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            HEARTBEAT.tick()
            left = WAIT_SLICE_S if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return self._event.is_set()
            if self._event.wait(min(left, WAIT_SLICE_S)):
                return True


def die_with_parent(stop: StopFlag) -> None:
    """Under ``ha-ingestor run``: ask Linux for SIGTERM when the supervisor dies, then check that
    it has not died already (between its fork and this call). Done here, after exec, instead of
    in a ``preexec_fn``, which can deadlock a child forked while the supervisor has threads."""
    parent = os.environ.get(PARENT_PID_ENV)
    if not parent or not parent.isdigit():
        return
    signal_when_parent_dies(signal.SIGTERM)
    if os.getppid() != int(parent):
        stop.set()          # the supervisor is gone already: stop as if it had sent SIGTERM


def signal_when_parent_dies(signum: int) -> None:
    """Ask Linux to send ``signum`` to this process when its parent dies (elsewhere: nothing).
    The caller checks ``os.getppid()`` afterwards: the parent may have died before."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum)
