"""A big Home Assistant for tests and benchmarks: thousands of entities, a steady stream of state
changes, and bulk changes for HA's recorder.

    server = start_big_ha(workdir, entities=5000)        # sensor.load_0000 ... sensor.load_4999
                                                          # (version="2025.4.4": that release)
    load = StateLoad(server, load_entity_ids(5000), rate=100).start()
    ...
    fired = load.stop()                                   # [(entity_id, time_fired), ...]
    bulk_changes(server, 360_000, entities=5000)          # into the recorder, ~1 700/s here

The steady load goes through HA's REST API (``POST /api/states/<entity_id>``), the way an
integration outside HA (Node-RED, AppDaemon, a script) sets states. Entities are created, and bulk
changes made, by a script run by HA's own ``python_script`` integration (``hass.states.set`` in
HA's process): four times the rate the REST API reaches here. Both go through HA's state machine,
event bus and recorder like any integration's states.

Every answer to ``POST /api/states`` carries the new state, whose ``last_updated`` is the
``time_fired`` of the ``state_changed`` event HA fired for it (in both tested releases), so
``fired`` is the exact list of state changes HA fired: the reference a test compares InfluxDB
with. Each request sets a value never set before, so each one fires exactly one
``state_changed``.
"""

from __future__ import annotations

import http.client
import json
import textwrap
import threading
import time
from pathlib import Path

from tests.support.real_ha import DEFAULT_HA_VERSION, HomeAssistantServer

ENTITY_PREFIX = "sensor.load_"
UNIT = "W"                    # the InfluxDB measurement the writer's default schema gives them
BULK_CHUNK = 20_000           # changes per script run; HA's recorder queue holds 65 000
BIG_HA_DOMAINS = ("python_script",)   # the integrations start_big_ha adds to the usual config

# Run by HA's python_script integration (RestrictedPython: no range() over 1 000, no imports).
BULK_SCRIPT = """\
first = data.get("first", 0)
count = data.get("count", 0)
entities = data.get("entities", 1)
i = 0
while i < count:
    k = i % entities
    attrs = {"unit_of_measurement": "UNIT", "device_class": "power",
             "state_class": "measurement", "friendly_name": "Load %04d" % k}
    hass.states.set("PREFIX%04d" % k, str(first + i), attrs)
    i += 1
""".replace("UNIT", UNIT).replace("PREFIX", ENTITY_PREFIX)


class _Values:
    """Every value this process sets is new, so every request fires one ``state_changed``."""

    def __init__(self) -> None:
        self._next = 1
        self._lock = threading.Lock()

    def reserve(self, count: int = 1) -> int:
        with self._lock:
            first, self._next = self._next, self._next + count
            return first


_VALUES = _Values()


def load_entity_ids(count: int) -> list[str]:
    return [f"{ENTITY_PREFIX}{n:04d}" for n in range(count)]


def attributes(entity_id: str) -> dict:
    """Attributes shaped like a power sensor's (the same the bulk script sets)."""
    name = entity_id.split(".", 1)[1].replace("_", " ").title()
    return {"unit_of_measurement": UNIT, "device_class": "power", "state_class": "measurement",
            "friendly_name": name}


def start_big_ha(workdir: Path, entities: int = 5000, timeout: float = 240,
                 version: str = DEFAULT_HA_VERSION) -> HomeAssistantServer:
    """A real HA of ``version`` (recorder + history) with ``entities`` power sensors, started.
    Its venv gets ``python_script``'s requirement (RestrictedPython) the way ``ha_venv`` installs
    those of any integration a config names (``BIG_HA_DOMAINS``)."""
    server = HomeAssistantServer(workdir, extra_yaml="python_script:\n", version=version)
    scripts = server.config_dir / "python_scripts"
    scripts.mkdir(parents=True, exist_ok=True)
    (scripts / "bulk_states.py").write_text(textwrap.dedent(BULK_SCRIPT))
    server.start(timeout)
    bulk_changes(server, entities, entities)
    return server


def bulk_changes(server: HomeAssistantServer, count: int, entities: int) -> None:
    """``count`` state changes round-robin over the first ``entities`` sensors, as fast as HA
    makes them, in chunks that HA's recorder queue holds; returns once the recorder has written
    them all (``recorder/info`` backlog 0)."""
    with server.client(timeout=600) as client:
        done = 0
        while done < count:
            chunk = min(BULK_CHUNK, count - done)
            client.call_service("python_script", "bulk_states",
                                {"first": _VALUES.reserve(chunk), "count": chunk,
                                 "entities": entities})
            done += chunk
            _wait_recorded(client)


def _wait_recorded(client, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while client.command({"type": "recorder/info"})["backlog"]:
        if time.monotonic() > deadline:
            raise TimeoutError("HA's recorder did not write its backlog in time")
        time.sleep(0.2)


class StateClient:
    """One keep-alive HTTP connection to HA's REST API (not thread-safe: one per thread)."""

    def __init__(self, server, timeout: float = 30):
        self.port, self.token, self.timeout = server.port, server.token, timeout
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def set_state(self, entity_id: str, state: str, attrs: dict) -> dict:
        """The new state as HA answered it."""
        body = json.dumps({"state": state, "attributes": attrs})
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        for attempt in range(3):
            try:
                self.conn.request("POST", f"/api/states/{entity_id}", body, headers)
                response = self.conn.getresponse()
                raw = response.read()
                break
            except (OSError, http.client.HTTPException):
                self.conn.close()     # a dropped keep-alive connection: reconnect and resend
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                       timeout=self.timeout)
                if attempt == 2:
                    raise
        if response.status not in (200, 201):
            raise RuntimeError(f"POST /api/states/{entity_id}: HTTP {response.status}: "
                               f"{raw[:200]!r}")
        return json.loads(raw)

    def close(self) -> None:
        self.conn.close()


class StateLoad:
    """State changes at a steady ``rate`` per second, round-robin over ``entity_ids``, from
    ``workers`` threads on a shared schedule (a late request is followed by the next ones at once,
    so the average rate holds). ``burst=True`` ignores the rate: as fast as HA answers."""

    def __init__(self, server, entity_ids: list[str], rate: float = 100.0, workers: int = 2,
                 burst: bool = False, total: int | None = None):
        self.server = server
        self.entity_ids = entity_ids
        self.rate = rate
        self.workers = workers
        self.burst = burst
        self.total = total
        self.fired: list[tuple[str, str]] = []       # (entity_id, time_fired), in answer order
        self.errors: list[str] = []
        self.started_at = self.stopped_at = 0.0
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self) -> "StateLoad":
        self.started_at = time.monotonic()
        for k in range(self.workers):
            thread = threading.Thread(target=self._run, args=(k,), name=f"ha-load-{k}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> list[tuple[str, str]]:
        """Stop, wait for the requests in flight; returns every state change fired."""
        self._stopping.set()
        self.join()
        if self.errors:
            raise RuntimeError(f"{len(self.errors)} requests failed, e.g. {self.errors[:3]}")
        return list(self.fired)

    def join(self, timeout: float | None = None) -> None:
        for thread in self._threads:
            thread.join(timeout)
        self.stopped_at = time.monotonic()

    def achieved_rate(self) -> float:
        end = self.stopped_at or time.monotonic()
        return len(self.fired) / max(end - self.started_at, 1e-9)

    def _run(self, worker: int) -> None:
        client = StateClient(self.server)
        try:
            n = worker
            while not self._stopping.is_set() and (self.total is None or n < self.total):
                if not self.burst:
                    delay = self.started_at + n / self.rate - time.monotonic()
                    if delay > 0 and self._stopping.wait(delay):
                        return
                self._change(client, n)
                n += self.workers
        finally:
            client.close()

    def _change(self, client: StateClient, n: int) -> None:
        entity_id = self.entity_ids[n % len(self.entity_ids)]
        try:
            state = client.set_state(entity_id, str(_VALUES.reserve()), attributes(entity_id))
        except (OSError, RuntimeError, http.client.HTTPException) as exc:
            with self._lock:
                self.errors.append(f"{entity_id}: {exc}")
            return
        with self._lock:
            self.fired.append((entity_id, state["last_updated"]))
