"""One chaos run: servers up, ledger listening, pipeline running, steady load, the seeded faults,
then the ledger compared with both InfluxDB databases."""

from __future__ import annotations

import faulthandler
import json
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.chaos import faults, procfs, verify
from tests.chaos.homeassistant import HomeAssistantServer
from tests.chaos.ledger import HALedger, MqttLedger, recorder_changes
from tests.chaos.load import HALoad, MqttLoad, mqtt_topics, retained_topics
from tests.chaos.pipeline import Pipeline, ingestor_config
from tests.chaos.servers import InfluxServer, MosquittoServer

OURS_DB = "ingestor"
HA_DB = "ha_integration"
MQTT_FILTERS = ["zigbee2mqtt/#", "tele/#"]
RETAINED_FIRST_SEQ = 100_000_000     # the retained load's seqs, apart from the live load's
SETTLE_TIMEOUT_S = 180
# the load's topics through the presets a zigbee2mqtt/Tasmota house would use; every payload's
# top-level "seq" becomes a field of that name
SCHEMA = {"mqtt": {"presets": ["zigbee2mqtt", "tasmota"]}}


@dataclass
class Report:
    profile: str
    seed: int
    load_s: float = 0.0
    rates: dict = field(default_factory=dict)
    outcomes: list = field(default_factory=list)
    ours_ha: verify.Column = field(default_factory=verify.Column)
    ours_mqtt: verify.Column = field(default_factory=verify.Column)
    ours_retained: verify.Column = field(default_factory=verify.Column)   # part of ours_mqtt
    integration_ha: verify.Column = field(default_factory=verify.Column)
    ledger: dict = field(default_factory=dict)
    peak_rss_mb: dict = field(default_factory=dict)
    settle_s: float | None = None
    workdir: str = ""
    with_pipeline: bool = True
    lost_at_s: dict = field(default_factory=dict)      # a few lost events: seconds since load start
    lost_by_fault: dict = field(default_factory=dict)  # pipeline -> {fault: lost events}
    duplicated_at_s: dict = field(default_factory=dict)

    @property
    def fault_errors(self) -> list[str]:
        return [f"{o.kind} at {o.started_s} s: {o.error}" for o in self.outcomes if o.error]

    @property
    def passed(self) -> bool:
        if not self.with_pipeline:
            return not self.fault_errors
        return self.ours_ha.clean and self.ours_mqtt.clean and self.ours_retained.clean \
            and not self.fault_errors

    def as_dict(self) -> dict:
        out = asdict(self)
        out["passed"] = self.passed
        return out


class ChaosRun:
    def __init__(self, workdir: Path, profile: faults.Profile, seed: int,
                 ingestor_env: dict | None = None, steps: list[faults.Step] | None = None,
                 schema: dict | None = None, with_pipeline: bool = True, log=print) -> None:
        self.workdir = workdir
        self.profile = profile
        self.seed = seed
        self.steps = steps if steps is not None else faults.plan(profile, seed)
        self.with_pipeline = with_pipeline
        if not with_pipeline:   # servers, load, ledger and HA's integration only
            self.steps = [s for s in self.steps if s.kind not in faults.PIPELINE_KINDS]
        self.ingestor_env = ingestor_env or {}
        self.schema = schema
        self.log = log
        self.report = Report(profile.name, seed, workdir=str(workdir),
                             rates={"ha": profile.ha_rate, "mqtt": profile.mqtt_rate,
                                    "mqtt_retained": profile.retained_rate},
                             with_pipeline=with_pipeline)
        self.pipeline = None
        self.rss: dict[str, float] = {}
        self._t0 = None
        self._sampling = threading.Event()

    # -- set-up and tear-down -------------------------------------------------------------------

    def setup(self) -> None:
        self.log(f"servers in {self.workdir}")
        self.influx = InfluxServer(self.workdir)
        self.influx.start()
        for db in (OURS_DB, HA_DB):
            self.influx.create_database(db)
        self.mosquitto = MosquittoServer(self.workdir)
        self.mosquitto.start()
        self.ha = HomeAssistantServer(self.workdir, influx_port=self.influx.port, influx_db=HA_DB)
        self.ha.start()
        rng = random.Random(self.seed)
        self.topics = mqtt_topics(rng)
        self.mqtt_ledger = MqttLedger(self.mosquitto.port, MQTT_FILTERS)
        self.mqtt_ledger.start()
        # Retained states on the broker before the pipeline's first subscription, counted from
        # here: the first subscription delivers them (retained), every later one would again.
        self.mqtt_since_ns = time.time_ns()
        self.retained_load = MqttLoad(self.mosquitto.port, retained_topics(rng),
                                      self.profile.retained_rate, random.Random(self.seed + 3),
                                      client_id="chaos-retained", retain=True,
                                      first_seq=RETAINED_FIRST_SEQ)
        self.retained_load.prime()
        self.ha_ledger = HALedger(self.ha.connect)
        self.ha_ledger.start()
        extra = {"schema": self.schema or SCHEMA}
        config = ingestor_config(self.workdir, self.mosquitto.port, self.ha.ws_url,
                                 self.influx.url, OURS_DB, MQTT_FILTERS, extra)
        if self.with_pipeline:
            self.pipeline = Pipeline(self.workdir, config,
                                     env={"CHAOS_HA_TOKEN": self.ha.token, **self.ingestor_env})
            self.pipeline.start()
        self.ha_load = HALoad(self.ha.connect, self.ha.entities, self.profile.ha_rate,
                              random.Random(self.seed + 1))
        self.mqtt_load = MqttLoad(self.mosquitto.port, self.topics, self.profile.mqtt_rate,
                                  random.Random(self.seed + 2))

    def teardown(self) -> None:
        self._sampling.set()
        for name in ("ha_load", "mqtt_load", "retained_load", "ha_ledger", "mqtt_ledger"):
            part = getattr(self, name, None)
            if part is not None:
                self._bounded(part.stop, name, timeout=10)
        for name in ("pipeline", "ha", "mosquitto", "influx"):
            server = getattr(self, name, None)
            if server is not None:
                try:
                    server.stop()
                except Exception as exc:
                    self.log(f"stopping {name}: {exc}")

    # -- the run --------------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def execute(self) -> Report:
        self.log("plan: " + ", ".join(f"+{s.gap_before_s}s {s.kind}" for s in self.steps))
        self.since_ns = time.time_ns()
        self._t0 = time.monotonic()
        self.ha_load.start()
        self.mqtt_load.start()
        self.retained_load.start()
        threading.Thread(target=self._sample_loop, daemon=True).start()
        time.sleep(self.profile.warmup_s)
        injector = faults.Injector(self, self.profile, self.log)
        for step in self.steps:
            time.sleep(step.gap_before_s)
            self.report.outcomes.append(injector.inflict(step.kind))
        time.sleep(self.profile.tail_s)
        self._bounded(self.ha_load.stop, "HA load generator")
        self._bounded(self.mqtt_load.stop, "MQTT load generator")
        self._bounded(self.retained_load.stop, "retained MQTT load generator")
        self.report.load_s = round(self.elapsed(), 1)
        self.log(f"load stopped after {self.report.load_s} s: {self.ha_load.sent} HA calls, "
                 f"{self.mqtt_load.seq} MQTT publishes; settling")
        time.sleep(3)               # trailing events reach the ledgers
        self._bounded(self.ha_ledger.stop, "HA ledger")
        self._bounded(self.mqtt_ledger.stop, "MQTT ledger")
        time.sleep(2)               # HA's recorder commits every second
        self._settle()
        self._sampling.set()
        self.report.peak_rss_mb = {k: round(v, 1) for k, v in self.rss.items()}
        return self.report

    def _bounded(self, action, what: str, timeout: float = 30.0) -> None:
        """Run ``action`` (a client's stop) but never hang the run on it; if it does not return,
        say so and dump every thread's stack into the log."""
        done = threading.Event()

        def call():
            try:
                action()
            except Exception as exc:       # a client that cannot stop cleanly: say so, go on
                self.log(f"stopping {what}: {type(exc).__name__}: {exc}")
            finally:
                done.set()
        threading.Thread(target=call, daemon=True).start()
        if not done.wait(timeout):
            self.log(f"{what} did not stop within {timeout:.0f} s; carrying on. Threads:")
            faulthandler.dump_traceback(all_threads=True)

    def _fired(self) -> tuple[dict, dict]:
        bus = self.ha_ledger.seen
        recorded = recorder_changes(self.ha.recorder_db, self.since_ns // 1000)
        ha_fired = {e: bus.get(e, set()) | recorded.get(e, set()) for e in set(bus) | set(recorded)}
        seen = set(self.mqtt_ledger.topic_of)
        accepted = set(self.mqtt_load.accepted) | set(self.retained_load.accepted)
        self.report.ledger = {
            "ha_bus_events": sum(len(v) for v in bus.values()),
            "ha_recorder_only": sum(len(v - bus.get(e, set())) for e, v in recorded.items()),
            "ha_bus_only": sum(len(v - recorded.get(e, set())) for e, v in bus.items()),
            "ha_ledger_gaps": len(self.ha_ledger.gaps),
            "ha_calls": self.ha_load.sent, "ha_call_errors": self.ha_load.errors,
            "ha_calls_skipped": self.ha_load.skipped,
            "mqtt_published": self.mqtt_load.seq, "mqtt_accepted": len(accepted),
            "mqtt_ledger_seen": len(seen), "mqtt_accepted_not_seen": len(accepted - seen),
            "mqtt_publishes_skipped": self.mqtt_load.skipped,
            "mqtt_retained_published": self.retained_load.seq - RETAINED_FIRST_SEQ + 1,
            "mqtt_retained_accepted": len(self.retained_load.accepted),
        }
        mqtt_fired = verify.by_topic(seen | accepted, self.mqtt_ledger.topic_of,
                                     {**self.mqtt_load.topic_of, **self.retained_load.topic_of})
        return ha_fired, mqtt_fired

    def _settle(self) -> None:
        """Compare until our pipeline has everything, or nothing changed for a while."""
        ha_fired, mqtt_fired = self._fired()
        started = time.monotonic()
        last, last_change = None, time.monotonic()
        while True:
            self._compare(ha_fired, mqtt_fired)
            if self.pipeline is None:
                return
            missing = self.report.ours_ha.lost + self.report.ours_mqtt.lost
            backlog = self.pipeline.backlog()
            if missing == 0 and backlog == 0:
                self.report.settle_s = round(time.monotonic() - started, 1)
                return
            if (missing, backlog) != last:
                last, last_change = (missing, backlog), time.monotonic()
            quiet = time.monotonic() - last_change
            # an empty queue and nothing arriving for 15 s: what is missing is not coming
            if (backlog == 0 and quiet > 15) or quiet > 60 \
                    or time.monotonic() - started > SETTLE_TIMEOUT_S:
                self.log(f"gave up settling: {missing} missing, backlog {backlog}")
                return
            time.sleep(3)

    def _compare(self, ha_fired: dict, mqtt_fired: dict) -> None:
        r, since = self.report, self.since_ns
        r.ours_ha = verify.compare(ha_fired, verify.ha_points(self.influx, OURS_DB, since))
        r.integration_ha = verify.compare(ha_fired, verify.ha_points(self.influx, HA_DB, since))
        landed = verify.mqtt_points(self.influx, OURS_DB, self.mqtt_since_ns,
                                    self.mqtt_ledger.topic_of)
        r.ours_mqtt = verify.compare(mqtt_fired, landed)
        retained = set(self.retained_load.topics)
        r.ours_retained = verify.compare(
            {k: v for k, v in mqtt_fired.items() if k in retained},
            {k: v for k, v in landed.items() if k in retained})
        r.lost_by_fault = {"ha-ingestor HA": self._by_fault(r.ours_ha, self._ha_offset),
                           "ha-ingestor MQTT": self._by_fault(r.ours_mqtt, self._mqtt_offset),
                           "HA integration": self._by_fault(r.integration_ha, self._ha_offset)}
        r.lost_at_s = self._offsets("lost_samples")
        r.duplicated_at_s = self._offsets("duplicate_samples")

    def _ha_offset(self, ident: int) -> float:
        return ident / 1e6 - self.since_ns / 1e9

    def _mqtt_offset(self, ident: int) -> float | None:
        published = self.mqtt_load.published_at.get(ident) or \
            self.retained_load.published_at.get(ident)
        return None if published is None else published - self.since_ns / 1e9

    def _by_fault(self, col: verify.Column, offset) -> dict:
        """How many of ``col``'s lost events were fired during each fault: after the start of the
        latest fault that started before them, up to 10 s after it recovered; else ``no fault``."""
        out: dict[str, int] = {}
        for _key, ident in getattr(col, "lost_ids", []):
            at = offset(ident)
            label = "no fault"
            started = [o for o in self.report.outcomes if at is not None and o.started_s - 1 <= at]
            if started:
                o = max(started, key=lambda o: o.started_s)
                if at <= o.started_s + o.duration_s + (o.recovery_s or 0) + 10:
                    label = f"{o.kind} at {o.started_s} s"
            out[label] = out.get(label, 0) + 1
        return out

    def _offsets(self, attr: str) -> dict:
        """When the sampled lost/duplicated events were fired, in seconds since load start, so
        they can be laid beside the fault timeline."""
        start_s = self.since_ns / 1e9
        out = {}
        for key, ids in getattr(self.report.ours_ha, attr).items():
            out[key] = [round(i / 1e6 - start_s, 2) for i in ids]
        published = {**self.mqtt_load.published_at, **self.retained_load.published_at}
        for key, ids in getattr(self.report.ours_mqtt, attr).items():
            out[key] = [round(published[i] - start_s, 2) if i in published else None
                        for i in ids]
        return out

    # -- process sampling -------------------------------------------------------------------------

    def _sample_loop(self) -> None:
        while not self._sampling.wait(1.0):
            self.sample_memory({})

    def sample_memory(self, detail: dict) -> None:
        if self.pipeline is None:
            return
        try:
            children = self.pipeline.children()
        except Exception:
            return
        for role, pid in children.items():
            try:
                mb = procfs.memory(pid).rss_bytes / 2**20
            except (FileNotFoundError, ProcessLookupError):
                continue
            self.rss[role] = max(self.rss.get(role, 0.0), mb)
            key = f"peak_rss_mb_{role}"
            detail[key] = round(max(detail.get(key, 0.0), mb), 1)


def run_chaos(workdir: Path, profile: str | faults.Profile, seed: int, **kwargs) -> Report:
    if isinstance(profile, str):
        profile = faults.PROFILES[profile]
    run = ChaosRun(workdir, profile, seed, **kwargs)
    try:
        run.setup()
        report = run.execute()
        (workdir / "report.json").write_text(json.dumps(report.as_dict(), indent=2, default=str))
    finally:
        run.teardown()
    return report
