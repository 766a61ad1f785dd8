"""Pytest fixtures for Home Assistant: real HA releases and the project's protocol test server.

- ``ha_version`` (session, parametrized): every tested release in turn (``HA_VERSIONS``:
  2024.3.3, 2025.4.4). A test that uses it, or a fixture below, runs once per release; its id
  says which (``[ha2025.4.4]``). Pytest groups the tests by release, so one release's HA is
  stopped before the next one's starts.
- ``real_ha`` (session, per release): one real HA with recorder + history (commit_interval 1),
  shared by every test in the session; tests that restart it leave it running.
- ``real_ha_factory`` (function, per release): ``real_ha_factory(extra_yaml="influxdb: ...",
  recorder=True)`` starts another real HA in the test's tmp dir and stops it at teardown.
- ``big_real_ha`` (module, per release): another real HA with 5 000 more entities
  (``sensor.load_NNNN``, tests/support/ha_load.py) for catch-up tests on a big installation.
- ``ha_test_server`` (function): an in-process ``HATestServer`` (faults on demand).

Outside CI a machine that cannot install HA skips the real-HA tests; under CI=true it fails them.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.ha_load import BIG_HA_DOMAINS, start_big_ha
from tests.support.procs import in_ci, tail, wait_until
from tests.support.real_ha import (HA_VERSIONS, HAInstallError, HomeAssistantServer,
                                   ensure_ha_venv)

BIG_HA_ENTITIES = 5000


def ha_venv_or_skip(version: str, extra_domains: tuple[str, ...] = ()) -> Path:
    """The venv of ``version``; a machine that cannot install it skips (fails under CI)."""
    try:
        return ensure_ha_venv(extra_domains, version)
    except HAInstallError as exc:
        message = f"cannot install Home Assistant {version}: {exc}"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


def pytest_collection_finish(session) -> None:
    """Install every release's venv before the first real-HA test, not inside one: a first
    install takes minutes (more than a test's timeout on a busy machine). A failure is left for
    the tests, which skip or (under CI) fail with its message."""
    if session.config.option.collectonly or not any(
            item.get_closest_marker("realha") for item in session.items):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for version in HA_VERSIONS:
        began = time.monotonic()
        try:
            venv = ensure_ha_venv(version=version)
        except HAInstallError:
            continue
        if reporter is not None:
            reporter.write_line(f"Home Assistant {version}: {venv} "
                                f"(ready in {time.monotonic() - began:.0f} s)")


@pytest.fixture(scope="session", params=HA_VERSIONS, ids=[f"ha{v}" for v in HA_VERSIONS])
def ha_version(request) -> str:
    """Each tested Home Assistant release in turn."""
    return request.param


@pytest.fixture(scope="session")
def real_ha(ha_version, tmp_path_factory):
    """A running real HA with recorder and history; ``.token`` is an admin's long-lived token."""
    ha_venv_or_skip(ha_version)
    server = HomeAssistantServer(tmp_path_factory.mktemp(f"real-ha-{ha_version}"),
                                 recorder=True, version=ha_version)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def real_ha_factory(ha_version, tmp_path):
    """Start extra real HA instances (own config, e.g. HA's influxdb integration) for one test."""
    ha_venv_or_skip(ha_version)
    started: list[HomeAssistantServer] = []

    def start(extra_yaml: str = "", recorder: bool = True, name: str | None = None,
              timeout: float = 240) -> HomeAssistantServer:
        workdir = tmp_path / (name or f"ha-{len(started) + 1}")
        server = HomeAssistantServer(workdir, extra_yaml=extra_yaml, recorder=recorder,
                                     version=ha_version)
        started.append(server)
        return server.start(timeout)

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def big_real_ha(ha_version, tmp_path_factory):
    """A running real HA with recorder and history and ``BIG_HA_ENTITIES`` power sensors
    (``sensor.load_0000`` ...) besides the usual helpers; shared by one test module."""
    ha_venv_or_skip(ha_version, BIG_HA_DOMAINS)
    server = start_big_ha(tmp_path_factory.mktemp(f"big-ha-{ha_version}"),
                          entities=BIG_HA_ENTITIES, version=ha_version)
    yield server
    server.stop()


@pytest.fixture
def ha_test_server():
    """A running in-process ``HATestServer``; stopped at teardown."""
    from tests.support.ha_test_server import HATestServer

    server = HATestServer().start()
    yield server
    server.stop()


# ---- helpers for the collector tests ------------------------------------------------------------

def collector_overrides(url: str, token: str, **ha: object) -> dict:
    """ingestor() overrides that enable the HA collector (short pings and margin for tests)."""
    settings = {"enabled": True, "url": url, "token": token, "ping_interval": "2s",
                "ping_timeout": "2s", "backfill_margin": "2s"}
    settings.update(ha)
    return {"homeassistant": settings}


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """The collector's /metrics as {(sample name, sorted labels): value}."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metric(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def state_key(envelope: dict) -> tuple[str, str]:
    """(entity_id, time_fired) of a state_changed envelope: the identity of its InfluxDB point."""
    event = envelope["event"]
    return event["data"]["entity_id"], event["time_fired"]


def state_changes(envelopes: list[dict], kind: str | None = None) -> list[dict]:
    return [e for e in envelopes if e.get("src") == "ha"
            and e["event"].get("event_type") == "state_changed"
            and (kind is None or e["kind"] == kind)]


def wait_for_keys(ing, wanted: set, timeout: float = 60) -> list[dict]:
    """Wait until every (entity_id, time_fired) in ``wanted`` is in the queue."""
    envelopes: list[dict] = []

    def arrived() -> bool:
        nonlocal envelopes
        envelopes = ing.read_all("ha")
        return wanted <= {state_key(e) for e in state_changes(envelopes)}
    try:
        wait_until(arrived, timeout, "state changes in the queue", interval=0.5)
    except TimeoutError:
        missing = wanted - {state_key(e) for e in state_changes(envelopes)}
        pytest.fail(f"{len(missing)} of {len(wanted)} state changes missing, e.g. "
                    f"{sorted(missing)[:3]}\n{tail(ing.log_path('ha'))}")
    return envelopes
