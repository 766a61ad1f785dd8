"""``ha-ingestor run``: every enabled component as its own child process, under one supervisor.

The supervisor keeps one child per component (``mqtt``, ``ha``, ``writer``) alive:

- It starts the writer first and the collectors after it (outputs before inputs, as Telegraf does),
  and restarts a child that dies with the shared :class:`~ha_ingestor.backoff.Backoff` (0.5 s,
  doubling up to ``run.restart_backoff_max``). A child that ran for ``STABLE_AFTER`` seconds
  before it died starts again from the shortest delay.
- A child that exits with ``EXIT_CONFIG`` (2) or ``EXIT_AUTH`` (3) cannot be helped by a quick
  restart: it is retried on a long backoff (minutes) with an error in the log each time. When every
  child is in that state the supervisor itself exits with that code, so a container runtime or
  systemd sees a bad config rather than a crash loop.
- Signal handlers only record the signal. On the first SIGTERM/SIGINT the main loop stops the
  collectors (SIGTERM, wait: the MQTT collector commits what it holds and acknowledges it), then the
  writer (SIGTERM, wait: it finishes the write in progress), all within ``run.shutdown_timeout``.
  A child still running at its deadline is killed. A second signal kills every child at once and
  exits with ``EXIT_KILLED``.

- A child that is running but whose main loop has not ticked its heartbeat for
  ``run.stall_timeout`` (stopped with SIGSTOP, deadlocked, stuck in a call) is killed with
  SIGKILL and restarted like a crashed one: a stopped process cannot act on SIGTERM, and its
  queue items are simply taken again by the next writer. Each child ticks through a pipe the
  supervisor gives it (``ha_ingestor.lifecycle.Heartbeat``), read here without blocking.

Children run in their own process group, so a Ctrl-C in a terminal reaches only the supervisor
and the stop order above holds. Children are started without ``preexec_fn`` (Python code run
between fork and exec can deadlock on a lock another thread of the supervisor held at the fork);
on Linux each child asks for SIGTERM on the supervisor's death itself, right after it starts, and
stops at once if the supervisor is already gone (``lifecycle.die_with_parent``).

Exit codes (see :mod:`ha_ingestor.errors`): 0 every child stopped cleanly; 1 a child had to be
killed at the shutdown deadline or stopped with an error; 2/3 every child exited with that code;
130 stopped at once by a second signal.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field

from . import metrics as prom
from . import metrics_influx
from .backoff import Backoff
from .errors import (EXIT_AUTH, EXIT_CODES, EXIT_CONFIG, EXIT_FAILURE, EXIT_KILLED, EXIT_OK)
from .lifecycle import HEARTBEAT_FD_ENV, PARENT_PID_ENV, StopFlag

log = logging.getLogger(__name__)

WRITER = "writer"
COLLECTORS = ("mqtt", "ha")
START_ORDER = (WRITER, *COLLECTORS)
FATAL_EXITS = (EXIT_CONFIG, EXIT_AUTH)
POLL_INTERVAL = 0.1
STABLE_AFTER = 10.0           # seconds of uptime after which a crash restarts from the short delay
CRASH_BACKOFF = dict(base=0.5, factor=2.0, jitter=0.2)     # capped by run.restart_backoff_max
FATAL_BACKOFF = dict(base=60.0, factor=2.0, cap=600.0, jitter=0.1)
CLEAN_SIGNALS = (-signal.SIGTERM, -signal.SIGINT)   # stopped before its own handler was installed


@dataclass
class Child:
    """One supervised component: its command, its process, and when to start it again."""

    name: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    beats: int | None = None            # read end of the child's heartbeat pipe
    last_beat: float = 0.0
    restart_at: float | None = 0.0      # monotonic time of the next start; None: do not start
    last_exit: int | None = None
    restarts: int = 0
    crash_backoff: Backoff = field(default_factory=lambda: Backoff(cap=60.0, **CRASH_BACKOFF))
    fatal_backoff: Backoff = field(default_factory=lambda: Backoff(**FATAL_BACKOFF))

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def in_fatal_state(self) -> bool:
        return not self.running() and self.last_exit in FATAL_EXITS


def run(config, stop: StopFlag, child_argv: dict[str, list[str]]) -> int:
    """Supervise one child per entry of ``child_argv`` (component name -> full argv) until a
    signal sets ``stop``; return the supervisor's exit code."""
    if not child_argv:
        log.error("nothing to run: every component is disabled in the config")
        return EXIT_CONFIG
    supervisor = Supervisor(child_argv, config.run.shutdown_timeout, stop,
                            config.run.restart_backoff_max, config.run.stall_timeout)
    _serve_metrics(config, supervisor)
    return supervisor.run()


class Supervisor:
    """The main loop: start, watch, restart, and stop the children in order."""

    def __init__(self, child_argv: dict[str, list[str]], shutdown_timeout: float,
                 stop: StopFlag, restart_backoff_max: float = 60.0, stall_timeout: float = 60.0):
        order = sorted(child_argv, key=lambda n: START_ORDER.index(n) if n in START_ORDER else 99)
        self.children = [Child(name, list(child_argv[name]),
                               crash_backoff=Backoff(cap=restart_backoff_max, **CRASH_BACKOFF))
                         for name in order]
        self.shutdown_timeout = float(shutdown_timeout)
        self.stall_timeout = float(stall_timeout)
        self.stop = stop

    def run(self) -> int:
        install_signal_handlers(self.stop)
        log.info("supervising %s (shutdown timeout %.0f s)",
                 ", ".join(c.name for c in self.children), self.shutdown_timeout)
        while not self.stop.is_set():
            self.watch_once()
            fatal = self.fatal_exit_code()
            if fatal is not None:
                log.error("every component exited with code %d (%s); stopping", fatal,
                          EXIT_CODES[fatal])
                return fatal
            self.stop.wait(POLL_INTERVAL)
        return self.shutdown()

    def watch_once(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                self.check_heartbeat(child, now)
            if child.proc is not None and child.proc.poll() is not None:
                self.on_exit(child, now)
            if child.proc is None and child.restart_at is not None and now >= child.restart_at:
                self.start(child)

    def check_heartbeat(self, child: Child, now: float) -> None:
        """Read the child's ticks; kill it when none came for ``stall_timeout``."""
        if read_beats(child.beats):
            child.last_beat = now
        silent = now - child.last_beat
        if silent > self.stall_timeout:
            log.error("%s (pid %d) has not made progress for %.0f s (stopped or stuck; "
                      "run.stall_timeout %.0f s): killing it; it is restarted", child.name,
                      child.proc.pid, silent, self.stall_timeout)
            prom.CHILD_STALLS.labels(child.name).inc()
            send(child, signal.SIGKILL)
            child.proc.wait()

    def all_ready(self) -> bool:
        return all(child.running() for child in self.children)

    # -- one child -----------------------------------------------------------------------------

    def start(self, child: Child) -> None:
        try:
            child.proc, child.beats = spawn(child.argv)
        except OSError as exc:
            log.error("cannot start %s: %s", child.name, exc)
            child.restart_at = time.monotonic() + child.crash_backoff.next_delay()
            return
        child.started_at, child.restart_at = time.monotonic(), None
        child.last_beat = child.started_at
        prom.CHILD_UP.labels(child.name).set(1)
        log.info("started %s (pid %d)", child.name, child.proc.pid)

    def on_exit(self, child: Child, now: float) -> None:
        code, uptime = child.proc.returncode, now - child.started_at
        child.proc, child.last_exit = None, code
        close_beats(child)
        prom.CHILD_UP.labels(child.name).set(0)
        prom.CHILD_RESTARTS.labels(child.name).inc()
        delay = self.restart_delay(child, code, uptime)
        child.restart_at, child.restarts = now + delay, child.restarts + 1
        if code in FATAL_EXITS:
            log.error("%s exited with code %d: %s. Not restarting it for %.0f s; fix the cause "
                      "and it recovers on its own", child.name, code, EXIT_CODES[code], delay)
        else:
            log.warning("%s exited with %s after %.1f s; restarting in %.1f s", child.name,
                        describe_exit(code), uptime, delay)

    def restart_delay(self, child: Child, code: int, uptime: float) -> float:
        if code in FATAL_EXITS:
            return child.fatal_backoff.next_delay()
        child.fatal_backoff.reset()
        if uptime >= STABLE_AFTER:
            child.crash_backoff.reset()
        return child.crash_backoff.next_delay()

    def fatal_exit_code(self) -> int | None:
        """EXIT_CONFIG or EXIT_AUTH when every child last exited with one of them."""
        if not all(child.in_fatal_state() for child in self.children):
            return None
        codes = {child.last_exit for child in self.children}
        return EXIT_CONFIG if EXIT_CONFIG in codes else EXIT_AUTH

    # -- shutdown ------------------------------------------------------------------------------

    def shutdown(self) -> int:
        """Collectors first, then the writer, within ``shutdown_timeout`` in total. The collectors
        get at most half of it, so the writer always has time to finish its write."""
        started = time.monotonic()
        deadline = started + self.shutdown_timeout
        log.info("stopping: collectors first, then the writer (timeout %.0f s)",
                 self.shutdown_timeout)
        collectors = [c for c in self.children if c.name != WRITER]
        writers = [c for c in self.children if c.name == WRITER]
        ok = self.stop_group(collectors, started + self.shutdown_timeout / 2)
        ok = self.stop_group(writers, deadline) and ok
        if self.killed_at_once():
            return EXIT_KILLED
        log.info("stopped in %.1f s", time.monotonic() - started)
        return EXIT_OK if ok else EXIT_FAILURE

    def stop_group(self, children: list[Child], deadline: float) -> bool:
        """SIGTERM each running child, wait until they exit or ``deadline``, kill what is left.
        True when every child stopped cleanly."""
        running = [c for c in children if c.running()]
        for child in running:
            send(child, signal.SIGTERM)
        while any(c.running() for c in running) and time.monotonic() < deadline:
            if self.killed_at_once():
                break
            time.sleep(POLL_INTERVAL / 2)
        return all([self.finish(child) for child in running])

    def finish(self, child: Child) -> bool:
        if child.running():
            if not self.killed_at_once():
                log.error("%s did not stop within the shutdown timeout; killing it", child.name)
            send(child, signal.SIGKILL)
        code = child.proc.wait()
        close_beats(child)
        clean = code == EXIT_OK or code in CLEAN_SIGNALS
        if not clean and not self.killed_at_once():
            log.warning("%s stopped with %s", child.name, describe_exit(code))
        return clean

    def killed_at_once(self) -> bool:
        """A second signal: stop now, without draining."""
        return len(self.stop.signals) > 1


# -- processes and signals ---------------------------------------------------------------------


def spawn(argv: list[str]) -> tuple[subprocess.Popen, int]:
    """Start a child in its own process group (Ctrl-C reaches only the supervisor, which stops the
    children in order) with the write end of a heartbeat pipe; returns it and the read end.
    No ``preexec_fn``: the child arranges to die with the supervisor itself."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    env = {**os.environ, HEARTBEAT_FD_ENV: str(write_end), PARENT_PID_ENV: str(os.getpid())}
    try:
        proc = subprocess.Popen(argv, process_group=0, stdin=subprocess.DEVNULL, env=env,
                                pass_fds=(write_end,))
    except OSError:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    return proc, read_end


def read_beats(fd: int | None) -> bool:
    """Whether the child ticked since the last look (drains the pipe)."""
    if fd is None:
        return False
    ticked = False
    try:
        while os.read(fd, 4096):
            ticked = True
    except BlockingIOError:
        pass
    return ticked


def close_beats(child: Child) -> None:
    if child.beats is not None:
        os.close(child.beats)
        child.beats = None


def send(child: Child, sig: int) -> None:
    try:
        child.proc.send_signal(sig)
    except ProcessLookupError:
        pass


def install_signal_handlers(stop: StopFlag) -> None:
    """Record SIGTERM/SIGINT in ``stop`` and nothing else: the main loop acts on it. (The default
    StopFlag handler exits on the second signal, which would leave the children running.)"""
    def record(signum, _frame):
        stop.signals.append(signum)
        stop.set()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, record)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code} ({EXIT_CODES.get(code, 'unknown')})"


def _serve_metrics(config, supervisor: Supervisor) -> None:
    """The supervisor's own /metrics (child up, restarts), /healthz and /readyz (ready: every
    child running) on ``metrics.ports.run``; 0 or a missing port disables it."""
    metrics = config.metrics
    port = metrics.ports.get("run")
    if not metrics.enabled or not port:
        return
    _drop_component_metrics()
    try:
        prom.serve(metrics.host, port, ready=supervisor.all_ready)
    except OSError as exc:
        log.error("cannot serve the supervisor's metrics on %s:%d: %s", metrics.host, port, exc)


def _drop_component_metrics() -> None:
    """The components' metrics would read 0 here (no points written, InfluxDB down, ...) and
    mislead a dashboard; this process exports only its own (and prometheus-client's process
    metrics)."""
    from prometheus_client import REGISTRY
    from prometheus_client.metrics import MetricWrapperBase
    ours = (prom.CHILD_UP, prom.CHILD_RESTARTS, prom.CHILD_STALLS, prom.BUILD_INFO,
            metrics_influx.DROPPED, metrics_influx.EXPORTED)
    for metric in vars(prom).values():
        if isinstance(metric, MetricWrapperBase) and metric not in ours:
            REGISTRY.unregister(metric)
