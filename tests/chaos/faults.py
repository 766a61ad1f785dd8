"""Fault plans drawn from a seed, and the code that inflicts each fault and times the recovery.

Faults run one after another with random gaps, so that each loss (if any) can be traced to the
fault that caused it; the same seed gives the same plan. Kinds:

- ``kill_mqtt``, ``kill_ha``, ``kill_writer``: SIGKILL of that ``ha-ingestor run`` child; the
  supervisor must start a new one.
- ``influx_outage``: InfluxDB SIGKILLed, kept down, started again on the same data.
- ``outage_writer_kill``: the same with half the duration, and the writer SIGKILLed half-way
  through, while it holds batches it could not write.
- ``mosquitto_restart``: the broker stopped (SIGTERM: it saves its persistent sessions) and started.
- ``ha_restart``: Home Assistant stopped and started (its WebSocket and bus go away meanwhile).
- ``writer_pause``: the writer SIGSTOPped so a backlog builds, then SIGCONTed; drain time measured.
- ``run_restart``: the whole ``ha-ingestor run`` stopped gracefully (SIGTERM) and started again.
"""

from __future__ import annotations

import random
import signal
import time
from dataclasses import dataclass, field

KINDS = ("kill_mqtt", "kill_ha", "kill_writer", "influx_outage", "outage_writer_kill",
         "mosquitto_restart", "ha_restart", "writer_pause", "run_restart")
PIPELINE_KINDS = ("kill_mqtt", "kill_ha", "kill_writer", "outage_writer_kill", "writer_pause",
                  "run_restart")


@dataclass(frozen=True)
class Profile:
    name: str
    ha_rate: float              # HA state changes per second (call_service)
    mqtt_rate: float            # MQTT messages per second
    warmup_s: float
    gap_s: tuple[float, float]  # pause between faults, uniform
    tail_s: float               # load after the last fault
    counts: dict = field(hash=False)
    influx_outage_s: float = 60.0
    writer_pause_s: float = 300.0
    mosquitto_down_s: float = 2.0
    retained_rate: float = 2.0  # retained MQTT messages per second, on top of mqtt_rate


PROFILES = {
    "short": Profile("short", ha_rate=20, mqtt_rate=100, warmup_s=10, gap_s=(6, 12), tail_s=10,
                     counts={"kill_mqtt": 2, "kill_ha": 2, "kill_writer": 2, "influx_outage": 1,
                             "outage_writer_kill": 1, "mosquitto_restart": 1, "ha_restart": 1,
                             "writer_pause": 1},
                     influx_outage_s=20, writer_pause_s=30),
    "full": Profile("full", ha_rate=40, mqtt_rate=200, warmup_s=30, gap_s=(15, 35), tail_s=30,
                    counts={"kill_mqtt": 3, "kill_ha": 3, "kill_writer": 3, "influx_outage": 1,
                            "outage_writer_kill": 1, "mosquitto_restart": 2, "ha_restart": 2, "writer_pause": 1,
                            "run_restart": 1},
                    influx_outage_s=60, writer_pause_s=300, retained_rate=4),
}


@dataclass(frozen=True)
class Step:
    kind: str
    gap_before_s: float


def plan(profile: Profile, seed: int) -> list[Step]:
    """The faults of a run, in a seeded random order with seeded random gaps."""
    rng = random.Random(seed)
    kinds = [kind for kind in KINDS for _ in range(profile.counts.get(kind, 0))]
    rng.shuffle(kinds)
    return [Step(kind, round(rng.uniform(*profile.gap_s), 1)) for kind in kinds]


@dataclass
class Outcome:
    kind: str
    started_s: float            # seconds since the load started
    duration_s: float = 0.0     # how long the fault itself lasted
    recovery_s: float | None = None   # child restarted / backlog drained
    detail: dict = field(default_factory=dict)
    error: str | None = None


class Injector:
    """Inflicts faults on the servers and the pipeline of one run."""

    def __init__(self, run, profile: Profile, log) -> None:
        self.run = run              # tests.chaos.run.ChaosRun: servers, pipeline, clock
        self.profile = profile
        self.log = log

    def inflict(self, kind: str) -> Outcome:
        outcome = Outcome(kind, round(self.run.elapsed(), 1))
        started = time.monotonic()
        try:
            getattr(self, kind)(outcome)
        except Exception as exc:  # a fault that could not be completed is reported, not fatal
            outcome.error = f"{type(exc).__name__}: {exc}"
        if not outcome.duration_s:
            outcome.duration_s = round(time.monotonic() - started, 1)
        self.log(f"  fault {kind} at {outcome.started_s} s: {self._describe(outcome)}")
        return outcome

    @staticmethod
    def _describe(o: Outcome) -> str:
        parts = [f"{o.duration_s} s"]
        if o.recovery_s is not None:
            parts.append(f"recovered in {o.recovery_s} s")
        parts += [f"{k}={v}" for k, v in o.detail.items()]
        if o.error:
            parts.append(f"ERROR {o.error}")
        return ", ".join(parts)

    def _kill(self, role: str, o: Outcome) -> None:
        pid = self.run.pipeline.signal_child(role, signal.SIGKILL)
        o.detail["pid"] = pid
        o.recovery_s = round(self.run.pipeline.wait_restarted(role, pid), 2)

    def kill_mqtt(self, o: Outcome) -> None:
        self._kill("mqtt", o)

    def kill_ha(self, o: Outcome) -> None:
        self._kill("ha", o)

    def kill_writer(self, o: Outcome) -> None:
        self._kill("writer", o)

    def influx_outage(self, o: Outcome) -> None:
        self.run.influx.kill()
        time.sleep(self.profile.influx_outage_s)
        self.run.influx.start()
        o.duration_s = round(self.profile.influx_outage_s, 1)
        if self.run.pipeline is not None:
            o.detail["backlog_at_restart"] = self.run.pipeline.backlog()
            o.recovery_s = self._drain_time(o)

    def outage_writer_kill(self, o: Outcome) -> None:
        quarter = self.profile.influx_outage_s / 4   # outage: half the profile's, kill half-way
        self.run.influx.kill()
        time.sleep(quarter)
        pid = self.run.pipeline.signal_child("writer", signal.SIGKILL)
        o.detail["writer_pid"] = pid
        o.detail["writer_restart_s"] = round(self.run.pipeline.wait_restarted("writer", pid), 2)
        time.sleep(max(0.0, quarter - o.detail["writer_restart_s"]))
        self.run.influx.start()
        o.duration_s = round(2 * quarter, 1)
        o.detail["backlog_at_restart"] = self.run.pipeline.backlog()
        o.recovery_s = self._drain_time(o)

    def mosquitto_restart(self, o: Outcome) -> None:
        self.run.mosquitto.stop()
        time.sleep(self.profile.mosquitto_down_s)
        self.run.mosquitto.start()

    def ha_restart(self, o: Outcome) -> None:
        self.run.ha.stop()
        self.run.ha.start()

    def writer_pause(self, o: Outcome) -> None:
        pid = self.run.pipeline.signal_child("writer", signal.SIGSTOP)
        try:
            time.sleep(self.profile.writer_pause_s)
            o.detail["backlog_at_release"] = self.run.pipeline.backlog()
        finally:
            self.run.pipeline.signal_child("writer", signal.SIGCONT)
        o.duration_s = round(self.profile.writer_pause_s, 1)
        o.recovery_s = self._drain_time(o, pid)

    def run_restart(self, o: Outcome) -> None:
        o.detail["exit_code"] = self.run.pipeline.stop()
        self.run.pipeline.start()

    def _drain_time(self, o: Outcome, writer_pid: int | None = None) -> float | None:
        """Seconds until the queues are back to their steady-state depth (about two seconds of
        load); the writer's peak RSS while draining goes into ``o.detail``."""
        steady = 2 * (self.profile.ha_rate + self.profile.mqtt_rate)
        started = time.monotonic()
        while time.monotonic() - started < 900:
            backlog = self.run.pipeline.backlog()
            if backlog <= steady:
                elapsed = time.monotonic() - started
                if writer_pid is not None and elapsed >= 1.0:   # a paused writer's backlog
                    o.detail["drain_events_per_s"] = round(
                        o.detail.get("backlog_at_release", 0) / elapsed)
                self.run.sample_memory(o.detail)
                return round(elapsed, 1)
            self.run.sample_memory(o.detail)
            time.sleep(0.25)
        return None
