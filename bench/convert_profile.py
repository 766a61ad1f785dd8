"""Where the writer's conversion spends its time: cProfile over the writer benchmark's event mix.

    .venv/bin/python bench/convert_profile.py [--events 50000] [--top 10]

Converts ``--events`` events of ``bench/writer_bench.py``'s mix (HA state changes, call_service
events, zigbee2mqtt JSON and plain MQTT values) with the writer benchmark's schema, as the writer
does (``Converter.encode``: the line and its UTF-8 bytes). Prints one JSON line: the CPU time per
event without the profiler, and the ``--top`` functions by their own time under the profiler, as a
share of the whole.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ha_ingestor.config.schema import build_schema  # noqa: E402
from tests.support.fixtures_influx import mixed_events  # noqa: E402
from writer.convert import Converter  # noqa: E402
from writer_bench import SCHEMA  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    events = mixed_events(args.events, time.time_ns() - 3600 * 10**9)
    encode = Converter(build_schema(SCHEMA)).encode

    began = time.process_time()
    for event in events:
        encode(event)
    per_event_us = (time.process_time() - began) / len(events) * 1e6

    profile = cProfile.Profile()
    profile.runcall(lambda: [encode(event) for event in events])
    stats = pstats.Stats(profile).stats
    total = sum(own for (_calls, _primitive, own, _cumulative, _callers) in stats.values())
    top = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:args.top]
    print(json.dumps({
        "events": len(events), "convert_us_per_event": round(per_event_us, 2),
        "own_time_share_pct": {f"{Path(file).name}:{line}({name})": round(own / total * 100, 1)
                               for (file, line, name), (_c, _p, own, _cum, _callers) in top}}))


if __name__ == "__main__":
    main()
