"""Ledger vs InfluxDB: per HA entity and per MQTT topic, what was fired, what landed, what was
lost, what landed more than once, and what landed that was never fired.

HA points are matched on (entity, time) at microsecond resolution: the point's time is the event's
``time_fired`` (HA's own integration writes it through a float, so nanoseconds can differ by a few
hundred). MQTT points are matched on the ``seq`` field every load payload carries.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field


@dataclass
class Column:
    """One pipeline's result for one source."""

    fired: int = 0
    landed: int = 0            # fired events found at least once
    lost: int = 0              # fired events not found
    duplicates: int = 0        # extra copies of fired events
    unexpected: int = 0        # points that match no fired event
    lost_by: dict = field(default_factory=dict)        # entity or topic -> count
    duplicates_by: dict = field(default_factory=dict)
    lost_samples: dict = field(default_factory=dict)   # key -> a few lost ids, for tracing
    duplicate_samples: dict = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return self.lost == 0 and self.duplicates == 0 and self.unexpected == 0

    def as_dict(self) -> dict:
        return asdict(self)


def compare(fired: dict[str, set], landed: dict[str, Counter]) -> Column:
    """``fired``: key (entity or topic) -> set of event ids; ``landed``: key -> Counter of ids
    found in InfluxDB (an id counted twice landed twice)."""
    col = Column()
    col.lost_ids = []          # every lost (key, id): not in the JSON, for attributing to faults
    for key in sorted(set(fired) | set(landed)):
        want, got = fired.get(key, set()), landed.get(key, Counter())
        missing = want - set(got)
        col.lost_ids += [(key, i) for i in missing]
        lost = len(missing)
        dups = sum(n - 1 for ident, n in got.items() if n > 1 and ident in want)
        col.fired += len(want)
        col.landed += len(want) - lost
        col.lost += lost
        col.duplicates += dups
        col.unexpected += sum(n for ident, n in got.items() if ident not in want)
        if lost:
            col.lost_by[key] = lost
            col.lost_samples[key] = sorted(want - set(got))[:5]
        if dups:
            col.duplicates_by[key] = dups
            col.duplicate_samples[key] = sorted(i for i, n in got.items() if n > 1)[:5]
    return col


def ha_points(influx, db: str, since_ns: int, prefix: str = "chaos_") -> dict[str, Counter]:
    """{entity_id: Counter(time_us)} of every HA state point for a ``prefix`` entity in ``db``."""
    series = influx.query(f'SELECT * FROM /.*/ WHERE time >= {since_ns} AND '
                          f'"entity_id" =~ /^{prefix}/ GROUP BY "domain", "entity_id"', db=db)
    found: dict[str, Counter] = {}
    for s in series:
        tags = s.get("tags") or {}
        entity = f"{tags.get('domain')}.{tags.get('entity_id')}"
        times = found.setdefault(entity, Counter())
        for row in s["values"]:
            times[round(row[0] / 1000)] += 1
    return found


def mqtt_points(influx, db: str, since_ns: int, topic_of: dict[int, str]) -> dict[str, Counter]:
    """{topic: Counter(seq)} of every point carrying a ``seq`` field in ``db``; a seq the ledger
    never saw is filed under ``(unknown topic)``."""
    series = influx.query(f'SELECT "seq" FROM /.*/ WHERE time >= {since_ns}', db=db)
    found: dict[str, Counter] = {}
    for s in series:
        col = s["columns"].index("seq")
        for row in s["values"]:
            if row[col] is None:
                continue
            seq = int(row[col])
            found.setdefault(topic_of.get(seq, "(unknown topic)"), Counter())[seq] += 1
    return found


def by_topic(seqs: set[int], topic_of: dict[int, str], fallback: dict[int, str]) -> dict[str, set]:
    out: dict[str, set] = {}
    for seq in seqs:
        out.setdefault(topic_of.get(seq) or fallback.get(seq, "(unknown topic)"), set()).add(seq)
    return out
