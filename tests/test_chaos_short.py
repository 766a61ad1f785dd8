"""The short chaos run (CI): the whole pipeline against real Home Assistant, Mosquitto and
InfluxDB under steady load, every fault kind at least once, then the ground-truth ledger compared
with InfluxDB point by point. Our pipeline must lose nothing and duplicate nothing, retained MQTT
messages included (one point each however often the broker sends them again); HA's own
influxdb integration, fed the same events under the same faults, is reported beside it."""

from __future__ import annotations

import pytest

from tests.chaos import faults
from tests.chaos.report import render
from tests.chaos.run import run_chaos

pytestmark = [pytest.mark.slow, pytest.mark.realha, pytest.mark.timeout(900)]


def test_short_chaos_run_loses_and_duplicates_nothing(tmp_path):
    profile = faults.PROFILES["short"]
    report = run_chaos(tmp_path, profile, seed=7, log=print)
    text = render(report)
    print(text)

    kinds = {o.kind for o in report.outcomes}
    assert kinds == {k for k, n in profile.counts.items() if n}, text
    assert not report.fault_errors, text
    assert report.ours_ha.fired > 1000 and report.ours_mqtt.fired > 10000, text
    assert (report.ours_ha.lost, report.ours_ha.duplicates, report.ours_ha.unexpected) == \
        (0, 0, 0), text
    assert (report.ours_mqtt.lost, report.ours_mqtt.duplicates, report.ours_mqtt.unexpected) == \
        (0, 0, 0), text
    # retained messages: each one point, across every collector, broker and run restart
    assert report.ours_retained.fired > 100, text
    assert (report.ours_retained.lost, report.ours_retained.duplicates,
            report.ours_retained.unexpected) == (0, 0, 0), text
    # the backlog built while the writer was stopped drained
    pause = next(o for o in report.outcomes if o.kind == "writer_pause")
    assert pause.recovery_s is not None and pause.detail["backlog_at_release"] > 0, text
    # HA's integration saw the same events; its losses are reported, not asserted
    assert report.integration_ha.fired == report.ours_ha.fired
