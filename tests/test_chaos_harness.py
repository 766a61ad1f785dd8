"""The chaos harness must fail loudly when a guarantee breaks. Each test runs the real pipeline
with a deliberately broken build (a patch loaded into every ``ha-ingestor run`` child through a
test-only ``sitecustomize``, see tests/chaos/broken/) and asserts the harness reports the loss or
the duplicates and fails the run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos import faults
from tests.chaos.report import render
from tests.chaos.run import run_chaos

pytestmark = [pytest.mark.slow, pytest.mark.realha, pytest.mark.timeout(600)]

BROKEN = Path(__file__).parent / "chaos" / "broken"
QUICK = faults.Profile("harness-check", ha_rate=20, mqtt_rate=100, warmup_s=5, gap_s=(3, 3),
                       tail_s=5, counts={}, influx_outage_s=16)


def run_broken(tmp_path: Path, variant: str, steps: list[faults.Step]):
    env = {"PYTHONPATH": str(BROKEN), "CHAOS_BROKEN_BUILD": variant}
    report = run_chaos(tmp_path, QUICK, seed=3, steps=steps, ingestor_env=env, log=print)
    text = render(report)
    print(text)
    return report, text


def test_writer_that_acks_before_writing_is_caught(tmp_path):
    """Acks on take: the batches the writer holds when it is killed during an InfluxDB outage are
    gone from the queue and never reach InfluxDB."""
    report, text = run_broken(tmp_path, "writer_ack_before_write",
                              [faults.Step("outage_writer_kill", 3)])
    assert not report.passed, text
    assert report.ours_ha.lost + report.ours_mqtt.lost > 0, text
    assert "FAIL" in text and "lost" in text


def test_collector_that_stores_twice_is_caught(tmp_path):
    report, text = run_broken(tmp_path, "collector_duplicates", [])
    assert not report.passed, text
    assert report.ours_mqtt.duplicates > 0, text
    assert report.ours_mqtt.duplicates_by, text


def test_collector_that_stores_retained_messages_again_is_caught(tmp_path):
    """Before retained messages were recognised: every restart of the collector subscribed again
    and stored the retained messages the broker sent, each a second point."""
    report, text = run_broken(tmp_path, "collector_restores_retained",
                              [faults.Step("kill_mqtt", 3)])
    assert not report.passed, text
    assert len(report.ours_retained.duplicates_by) == 8, text   # every retained topic
    assert report.ours_ha.duplicates == 0 and report.ours_mqtt.lost == 0, text


def test_collector_that_drops_commits_is_caught(tmp_path):
    report, text = run_broken(tmp_path, "collector_drops", [])
    assert not report.passed, text
    assert report.ours_ha.lost + report.ours_mqtt.lost > 0, text
