"""The human-readable chaos report: both columns side by side, the faults, the verdict."""

from __future__ import annotations

from tests.chaos.run import Report
from tests.chaos.verify import Column

ROWS = (("fired", "fired"), ("landed", "  landed in InfluxDB"), ("lost", "  lost"),
        ("duplicates", "  duplicate points"), ("unexpected", "  points never fired"))


def render(r: Report) -> str:
    lines = [f"chaos run: profile {r.profile}, seed {r.seed}, {r.load_s} s of load at "
             f"{r.rates.get('ha', '?')} HA changes/s + {r.rates.get('mqtt', '?')} MQTT msgs/s "
             f"(+ {r.rates.get('mqtt_retained', 0)} retained), "
             f"{len(r.outcomes)} faults",
             "", f"{'':34}{'ha-ingestor':>14}{'HA influxdb integration':>26}"]
    ours = (r.ours_ha, r.ours_mqtt, r.ours_retained) if r.with_pipeline else (None,) * 3
    lines += _block("HA state_changed", ours[0], r.integration_ha)
    lines += _block("MQTT messages", ours[1], None)
    lines += _block("MQTT retained messages (part of the above)", ours[2], None)
    lines += ["", "faults (seconds since load start):",
              f"  {'kind':<18}{'at':>8}{'lasted':>8}{'recovery':>10}  detail"]
    for o in r.outcomes:
        detail = ", ".join(f"{k}={v}" for k, v in o.detail.items())
        if o.error:
            detail = f"ERROR {o.error}; {detail}"
        rec = "-" if o.recovery_s is None else f"{o.recovery_s}"
        lines.append(f"  {o.kind:<18}{o.started_s:>8}{o.duration_s:>8}{rec:>10}  {detail}")
    for who, counts in r.lost_by_fault.items():
        if counts:
            lines.append(f"{who} lost, by the fault they were fired during: " + ", ".join(
                f"{label}: {n}" for label, n in sorted(counts.items(), key=lambda kv: -kv[1])))
    lines += ["", "ledger: " + ", ".join(f"{k}={v}" for k, v in r.ledger.items()),
              "peak RSS (MB): " + ", ".join(f"{k} {v}" for k, v in sorted(r.peak_rss_mb.items())),
              f"settled {r.settle_s} s after the load stopped" if r.settle_s is not None
              else "did NOT settle: points still missing when the harness gave up"]
    for name, col in (("HA entity", ours[0]), ("MQTT topic", ours[1])):  # retained: in MQTT
        if col is None:
            continue
        for key, n in sorted(col.lost_by.items(), key=lambda kv: -kv[1])[:15]:
            lines.append(f"  ha-ingestor lost {n} on {name} {key}, fired at "
                         f"{_secs(r.lost_at_s.get(key))}")
        for key, n in sorted(col.duplicates_by.items(), key=lambda kv: -kv[1])[:15]:
            lines.append(f"  ha-ingestor duplicated {n} on {name} {key}, fired at "
                         f"{_secs(r.duplicated_at_s.get(key))}")
    lines += [f"  fault error: {e}" for e in r.fault_errors]
    if not r.with_pipeline:
        lines.append("harness only (--no-pipeline): no verdict on ha-ingestor")
    else:
        lines.append("PASS: 0 lost, 0 duplicates" if r.passed
                     else "FAIL: the pipeline broke a guarantee")
    return "\n".join(lines)


def _block(title: str, ours: Column | None, theirs: Column | None) -> list[str]:
    out = [title]
    for attr, label in ROWS:
        mine = "-" if ours is None else f"{getattr(ours, attr):,}"
        other = "-" if theirs is None else f"{getattr(theirs, attr):,}"
        out.append(f"{label:<34}{mine:>14}{other:>26}")
    return out


def _secs(offsets) -> str:
    if not offsets:
        return "?"
    return ", ".join("?" if o is None else f"{o} s" for o in offsets) + " (e.g.)"
