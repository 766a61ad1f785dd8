"""One fleet run: sites → a three-node JetStream cluster → central writers → InfluxDB 1.6.7, with
faults, counted per site.

Every site has its own queue directory and its own ``ha-ingestor write`` process publishing to
the cluster (``nats.publish``). A feeder thread per site appends MQTT and Home Assistant
envelopes to the site's queue files through the queue's ``Producer``, exactly what the
collectors call: the collectors' own guarantees (broker acks, HA backfill) are proven by their
own suites; this run is about what happens after the queue, and twenty brokers and twenty Home
Assistants would not fit on two cores beside it. Two ``write --from-nats`` processes share the
durable consumer. While the sites are fed, the faults run one after another; then everything
drains and every site's points are counted in InfluxDB: each event is one point with its own
(series, time), so a site is right when InfluxDB holds exactly as many points as were fed.
"""

from __future__ import annotations

import asyncio
import json
import queue as stdqueue
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import nats

from ha_ingestor import queue
from tests.support import fleet
from tests.support.fixtures_influx import InfluxServer, mixed_events
from tests.support.fixtures_ingestor import IngestorHarness
from tests.support.fixtures_nats import NatsCluster
from tests.support.procs import kill_process, stop_process, tail, wait_until

START_NS = 1_700_000_000_000_000_000
CHUNK = 100                              # events per queue item, as a busy collector commits
BURST = 10_000                           # events appended at once before an edge writer's kill


@dataclass(frozen=True)
class Profile:
    sites: int
    events_per_site: int
    outage_s: float                      # InfluxDB down, the whole cluster down
    settle_s: float                      # between two faults
    drain_timeout_s: float


PROFILES = {
    "short": Profile(sites=4, events_per_site=3000, outage_s=10, settle_s=3,
                     drain_timeout_s=180),
    "full": Profile(sites=20, events_per_site=15000, outage_s=60, settle_s=15,
                    drain_timeout_s=900),
}


@dataclass
class Site:
    name: str
    harness: IngestorHarness
    events: list[dict]
    fed: int = 0
    writer: object = None
    restarts: int = 0


@dataclass
class Report:
    profile: str
    sites: dict[str, dict] = field(default_factory=dict)
    faults: list[dict] = field(default_factory=list)
    duplicates_dropped: int = 0
    redelivered: int = 0
    seconds: float = 0.0
    passed: bool = False

    def as_dict(self) -> dict:
        return self.__dict__


class FleetRun:
    def __init__(self, workdir: Path, profile_name: str, log: Callable[[str], None]):
        self.workdir = workdir
        self.profile_name = profile_name
        self.profile = PROFILES[profile_name]
        self.log = log
        self.cluster = NatsCluster(workdir / "nats")
        self.influx = InfluxServer(workdir / "influxdb")
        self.sites: list[Site] = []
        self.central: IngestorHarness | None = None
        self.centrals: list = []
        self.report = Report(profile_name)
        self._bursts: stdqueue.Queue = stdqueue.Queue()
        self._stop_feeding = threading.Event()

    # ---- set-up ---------------------------------------------------------------------------------

    def start(self) -> None:
        self.cluster.start()
        self.influx.start()
        self.influx.create_database(fleet.DB)
        servers = self.cluster.urls
        self.central = IngestorHarness(self.workdir / "central", fleet.central_overrides(
            servers, self.influx.url, replicas=3))
        self.central.workdir.mkdir(parents=True, exist_ok=True)
        self.central.write_config()
        result = self.central.run("nats", "init", timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"nats init failed: {result.stderr}")
        self.log("JetStream: " + "; ".join(result.stdout.splitlines()[:1]))
        for i in range(self.profile.sites):
            self.sites.append(self._make_site(i, servers))
        for site in self.sites:
            self._start_writer(site)
        for i in range(2):
            self.centrals.append(self._start_central(i))

    def _make_site(self, index: int, servers: list[str]) -> Site:
        name = f"site-{index:02d}"
        overrides = fleet.site_overrides(servers, name, message_points=50 if index == 0 else 500)
        if index == 0:           # the site whose writer is killed mid-publish: long publishes
            overrides["influxdb"]["batch_size"] = 20000
        harness = IngestorHarness(self.workdir / name, overrides)
        harness.workdir.mkdir(parents=True, exist_ok=True)
        harness.write_config()
        events = mixed_events(self.profile.events_per_site, START_NS + index * 10**12)
        return Site(name, harness, events)

    def _start_writer(self, site: Site) -> None:
        site.writer = site.harness.start("write", log=f"writer{site.restarts}")

    def _start_central(self, index: int):
        return self.central.start("write", "--from-nats", log=f"central{index}-{time.time():.0f}",
                                  env={"HA_INGESTOR_METRICS__PORTS__CENTRAL": "0"})

    # ---- feeding --------------------------------------------------------------------------------

    def feed(self, seconds: float) -> threading.Thread:
        """Feed every site's events evenly over ``seconds`` from one thread, which then keeps
        serving bursts until ``stop_feeding``."""
        thread = threading.Thread(target=self._feed, args=(seconds,), name="feeder", daemon=True)
        thread.start()
        return thread

    def stop_feeding(self, thread: threading.Thread) -> None:
        self._stop_feeding.set()
        thread.join()

    def burst(self, site: Site, events: list[dict]) -> None:
        """Append ``events`` to ``site``'s queue at once (through the feeder's producers)."""
        done = threading.Event()
        self._bursts.put((site, events, done))
        done.wait(60)

    def _feed(self, seconds: float) -> None:
        producers = {(site.name, source): queue.Producer(site.harness.queue_dir, source, 2**31)
                     for site in self.sites for source in ("ha", "mqtt")}
        rounds = max(1, self.profile.events_per_site // CHUNK)
        started = time.monotonic()
        try:
            for r in range(rounds):
                for site in self.sites:
                    _append(producers, site, site.events[r * CHUNK:(r + 1) * CHUNK])
                self._serve_bursts(producers, started + seconds * (r + 1) / rounds)
            while not self._stop_feeding.is_set():
                self._serve_bursts(producers, time.monotonic() + 0.2)
        finally:
            for producer in producers.values():
                producer.close()

    def _serve_bursts(self, producers: dict, until: float) -> None:
        while True:
            try:
                site, events, done = self._bursts.get(timeout=max(0.0, until - time.monotonic()))
            except stdqueue.Empty:
                return
            for start in range(0, len(events), CHUNK * 10):
                _append(producers, site, events[start:start + CHUNK * 10])
            done.set()

    # ---- faults ---------------------------------------------------------------------------------

    def run_faults(self) -> None:
        settle = self.profile.settle_s
        for fault in (self.kill_nats_node, self.kill_central_writer, self.influxdb_down,
                      self.kill_edge_writer_mid_publish, self.nats_cluster_down):
            time.sleep(settle)
            began = time.monotonic()
            details = fault()
            details["seconds"] = round(time.monotonic() - began, 1)
            self.report.faults.append(details)
            self.log(f"fault {details['fault']}: {details.get('note', '')}")

    def kill_nats_node(self) -> dict:
        node = self.cluster.nodes[1]
        node.kill()
        time.sleep(self.profile.settle_s)
        node.start(wait=False)
        self.cluster.wait_ready()
        return {"fault": "NATS node SIGKILLed and restarted", "note": f"{node.name} down "
                f"{self.profile.settle_s:g} s"}

    def kill_central_writer(self) -> dict:
        victim = self.centrals.pop(0)
        kill_process(victim)
        time.sleep(self.profile.settle_s)
        self.centrals.append(self._start_central(len(self.centrals) + 10))
        return {"fault": "central writer SIGKILLed", "note": "its unacked messages went to the "
                "other writer after nats.ack_wait; a new one started after "
                f"{self.profile.settle_s:g} s"}

    def influxdb_down(self) -> dict:
        """InfluxDB stopped; a third of the way in, a central writer (holding a round it cannot
        write) is SIGKILLed as well: JetStream gives its messages to the other writer."""
        self.influx.stop()
        time.sleep(self.profile.outage_s / 3)
        victim = self.centrals.pop(0)
        kill_process(victim)
        self.centrals.append(self._start_central(len(self.centrals) + 20))
        time.sleep(self.profile.outage_s * 2 / 3)
        self.influx.start()
        return {"fault": f"InfluxDB down {self.profile.outage_s:g} s", "note": "stopped, "
                "then started again; a central writer SIGKILLed a third of the way in"}

    def kill_edge_writer_mid_publish(self) -> dict:
        """SIGKILL a site's writer mid-publish: after JetStream stored the first messages of a
        burst, while the queue items holding them are not acked yet. The central writers are
        paused meanwhile (SIGSTOP), so the stored messages can be counted. Then its restarted
        writer sends the items again and JetStream drops what it stored already."""
        site = self.sites[0]
        for attempt in range(1, 11):
            for proc in self.centrals:
                proc.send_signal(signal.SIGSTOP)
            site.writer.send_signal(signal.SIGSTOP)     # the burst waits for it
            self.burst(site, mixed_events(BURST, START_NS + 10**15 + attempt * 10**12))
            killed = asyncio.run(self._kill_after_first_acks(site))
            for proc in self.centrals:
                proc.send_signal(signal.SIGCONT)
            if not killed:
                continue
            site.restarts += 1
            self._start_writer(site)
            dropped = self._resend_dropped(site)
            if dropped:
                self.report.duplicates_dropped += dropped
                return {"fault": "edge writer SIGKILLed mid-publish", "note": f"{site.name}, "
                        f"try {attempt}: {dropped} re-sent messages dropped by JetStream as "
                        f"duplicates", "tries": attempt, "dropped": dropped}
        raise AssertionError("no SIGKILL landed between JetStream's ack and the queue's ack")

    async def _kill_after_first_acks(self, site: Site) -> bool:
        subject = f"ha_ingestor.points.{site.name}"
        nc = await nats.connect(servers=self.cluster.urls)
        try:
            js = nc.jetstream(timeout=5)
            before = await _stored(js, subject)
            site.writer.send_signal(signal.SIGCONT)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if await _stored(js, subject) > before:
                    status = queue.read_status(site.harness.queue_dir, "ha")
                    if status and status.in_flight:
                        kill_process(site.writer)
                        return True
                    return False          # published and acked before we looked
            return False
        finally:
            await nc.close()

    def _resend_dropped(self, site: Site) -> int:
        """Re-sent messages the restarted writer saw dropped; 0 once it caught up without."""
        log = site.harness.log_path(f"writer{site.restarts}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = log.read_text() if log.exists() else ""
            if "dropped by JetStream as duplicates" in text:
                return _dropped(text)
            if "reading queue" in text and fleet.queued(site.harness.queue_dir) == 0:
                return 0
            time.sleep(0.2)
        return 0

    def nats_cluster_down(self) -> dict:
        for node in self.cluster.nodes:
            node.stop()
        waiting = sum(fleet.queued(site.harness.queue_dir) for site in self.sites)
        time.sleep(self.profile.outage_s)
        queued = sum(fleet.queued(site.harness.queue_dir) for site in self.sites)
        for node in self.cluster.nodes:
            node.start(wait=False)
        self.cluster.wait_ready(120)
        return {"fault": f"whole NATS cluster down {self.profile.outage_s:g} s",
                "note": f"the sites kept queueing: {waiting} events queued at the stop, "
                        f"{queued} after {self.profile.outage_s:g} s"}

    # ---- the verdict ----------------------------------------------------------------------------

    def drain_and_count(self) -> None:
        expected = {site.name: site.fed for site in self.sites}
        try:
            wait_until(lambda: self._counts() == expected, self.profile.drain_timeout_s,
                       "every site's points in InfluxDB", interval=2.0)
        except TimeoutError as exc:
            self.log(str(exc))
        counts = self._counts()
        for site in self.sites:
            have = counts.get(site.name, 0)
            self.report.sites[site.name] = {"fed": site.fed, "in_influxdb": have,
                                            "lost": max(0, site.fed - have),
                                            "extra": max(0, have - site.fed),
                                            "queued": fleet.queued(site.harness.queue_dir)}
        unknown = {k: v for k, v in counts.items() if k not in expected}
        if unknown:
            self.report.sites["(no such site)"] = {"fed": 0, "in_influxdb": sum(unknown.values()),
                                                   "lost": 0, "extra": sum(unknown.values())}
        time.sleep(6)        # the central writers' next status line
        self.report.redelivered = sum(_delivered_again(path.read_text())
                                      for path in self.central.workdir.glob("central*.log"))
        self.report.passed = (not unknown and all(
            s["lost"] == 0 and s["extra"] == 0 for s in self.report.sites.values())
            and len(self.report.faults) == 5)

    def _counts(self) -> dict[str, int]:
        return site_counts(self.influx)

    def stop(self) -> None:
        for site in self.sites:
            if site.writer is not None:
                stop_process(site.writer, timeout=15)
        for proc in self.centrals:
            stop_process(proc, timeout=15)
        self.cluster.stop()
        self.influx.stop()

    def save(self) -> None:
        (self.workdir / "report.json").write_text(json.dumps(self.report.as_dict(), indent=2))

    def logs_of_failures(self) -> str:
        return "\n".join(tail(site.harness.log_path(f"writer{site.restarts}"), 10)
                         for site in self.sites[:2])


async def _stored(js, subject: str) -> int:
    info = await js.stream_info("HA_INGESTOR", subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


def _append(producers: dict, site: Site, events: list[dict]) -> None:
    for source in ("ha", "mqtt"):
        part = [e for e in events if e["src"] == source]
        if part:
            producers[(site.name, source)].append(part)
    site.fed += len(events)


def site_counts(influx: InfluxServer) -> dict[str, int]:
    """Points per ``site`` tag value: per measurement and site the largest field count (every
    point of mixed_events' measurements has one field all points of it share)."""
    counts: dict[str, int] = {}
    try:
        result = influx._raw_query("SELECT count(*) FROM /.*/ GROUP BY site", fleet.DB)
    except RuntimeError:
        return counts
    for series in result["results"][0].get("series", []):
        site = (series.get("tags") or {}).get("site", "")
        row = dict(zip(series["columns"], series["values"][0]))
        counts[site] = counts.get(site, 0) + max(
            (v for k, v in row.items() if k.startswith("count_") and v), default=0)
    return counts


def _dropped(text: str) -> int:
    total = 0
    for line in text.splitlines():
        if "dropped by JetStream as duplicates" in line:
            total += int(line.split(" of ", 1)[0].rsplit(" ", 1)[-1])
    return total


def _delivered_again(text: str) -> int:
    return sum(int(line.split(" messages were delivered again", 1)[0].rsplit(" ", 1)[-1])
               for line in text.splitlines() if "messages were delivered again" in line)


def run_fleet(workdir: Path, profile: str, log: Callable[[str], None]) -> Report:
    started = time.monotonic()
    run = FleetRun(workdir, profile, log)
    try:
        run.start()
        log(f"{len(run.sites)} sites, 2 central writers, a three-node JetStream cluster, "
            f"InfluxDB 1.6.7")
        p = run.profile
        feeding = run.feed(seconds=7 * p.settle_s + 2 * p.outage_s + 20)
        run.run_faults()
        run.stop_feeding(feeding)
        log("fed everything; draining")
        run.drain_and_count()
    finally:
        run.report.seconds = round(time.monotonic() - started, 1)
        run.save()
        run.stop()
    return run.report
