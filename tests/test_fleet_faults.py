"""Must-show of the fleet at a small scale, in every ``make test``: sites with their own queues
and writers → a three-node JetStream cluster (replicas 3) → two central writers → InfluxDB
1.6.7, through a NATS node SIGKILLed and restarted, a central writer SIGKILLed (twice: once
while InfluxDB is down, so it surely holds messages), InfluxDB down, an edge writer SIGKILLed
mid-publish and the whole cluster down. Every site's points are counted in InfluxDB: none lost,
none extra. ``make fleet`` runs the same with 20 sites and 60 s outages (tests/fleet/)."""

from __future__ import annotations

import pytest

from tests.fleet.__main__ import render
from tests.fleet.run import run_fleet

pytestmark = pytest.mark.slow


def test_short_fleet_run_loses_and_duplicates_nothing_through_every_fault(tmp_path):
    report = run_fleet(tmp_path / "fleet", "short", log=print)
    text = render(report.as_dict())
    print(text)
    assert [f["fault"].split(" down ")[0] for f in report.faults] == [
        "NATS node SIGKILLed and restarted", "central writer SIGKILLed", "InfluxDB",
        "edge writer SIGKILLed mid-publish", "whole NATS cluster"], text
    assert len(report.sites) == 4, text
    for name, row in report.sites.items():
        assert row["in_influxdb"] == row["fed"] > 0, f"{name}: {row}\n{text}"
        assert row["queued"] == 0
    assert report.duplicates_dropped > 0, "the re-send after the SIGKILL was dropped"
    assert report.redelivered > 0, "a killed central writer's messages went to the other"
    outage = report.faults[-1]["note"]
    queued_before, queued_after = [int(n) for n in outage.split(": ")[1].split()
                                   if n.isdigit()][:2]
    assert queued_after > queued_before, "the sites kept queueing while the cluster was down"
    assert report.passed, text
