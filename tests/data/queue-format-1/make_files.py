"""Makes ``mqtt.db.gz`` and ``ha.db.gz``: queue files written by release 0.1.0 (queue format 1),
for the upgrade test (tests/test_queue_upgrade.py).

Run from a checkout of release 0.1.0 (commit df52e73), where ``ha_ingestor/queue.py`` is the
format-1 queue:

    python tests/data/queue-format-1/make_files.py OUT_DIR

Content (``mixed_events(3000, START_NS)``, split by source, items of 500 events, as the
collectors append them):
- mqtt.db: item 1 taken and acknowledged (its row left as "acked", not yet cleared), item 2
  taken and never acknowledged (a writer killed mid-batch), the rest ready; two dead letters;
  meta ``mqtt.recent_fingerprints``.
- ha.db: item 1 taken and acknowledged, the rest ready; meta ``ha.newest_time_fired``.
"""

from __future__ import annotations

import gzip
import shutil
import sys
from pathlib import Path

from ha_ingestor.queue import Consumer, Producer
from tests.support.fixtures_influx import mixed_events

START_NS = 1_767_225_600_000_000_000         # 2026-01-01T00:00:00Z
PER_ITEM = 500


def make(out: Path) -> None:
    queue_dir = out / "work"
    events = mixed_events(3000, START_NS)
    for source in ("mqtt", "ha"):
        part = [e for e in events if e["src"] == source]
        producer = Producer(queue_dir, source, 2**30)
        for start in range(0, len(part), PER_ITEM):
            producer.append(part[start:start + PER_ITEM])
        consumer = Consumer(queue_dir, source)
        first = consumer.take(1)
        consumer.ack([first[0].item_id])
        if source == "mqtt":
            consumer.take(1)                  # in flight, never acknowledged
            consumer.dead_letter([(part[0], "rejected by InfluxDB: field type conflict"),
                                  (part[1], "conversion: malformed event")])
            producer.set_meta("mqtt.recent_fingerprints", "[]")
        else:
            producer.set_meta("ha.newest_time_fired", "2026-01-01T00:00:03+00:00")
        consumer.close()
        producer.close()
        with open(queue_dir / f"{source}.db", "rb") as raw, \
                gzip.open(out / f"{source}.db.gz", "wb") as packed:
            shutil.copyfileobj(raw, packed)
    shutil.rmtree(queue_dir)


if __name__ == "__main__":
    make(Path(sys.argv[1]))
