"""Durable queue benchmark: one producer process and one consumer process on one file.

    .venv/bin/python bench/queue_bench.py [--events 200000] [--batch 1000] [--aged 1000000]

Prints one JSON line:
  append_events_per_s      producer appends ~300-byte events in items of --batch (one commit each)
  drain_events_per_s       consumer take + ack, while nothing else runs
  concurrent_*             both processes at once (the real situation)
  aged_drain_events_per_s  drain rate after --aged events have passed through the same file
  drain_decay_pct          how much slower the aged file drains (target: <= 20)
  plain_*                  persist-queue SQLiteAckQueue used plainly (one item per event), same run
  ratio_*                  ours / plain
Every append is durable when it returns (WAL, synchronous=FULL); the contract tests show it
survives SIGKILL.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from persistqueue import SQLiteAckQueue  # noqa: E402
from persistqueue.exceptions import Empty  # noqa: E402

from ha_ingestor.queue import Consumer, Producer, _Json  # noqa: E402


def make_event(i: int) -> dict:
    """About 300 bytes as JSON, shaped like an MQTT envelope."""
    return {"src": "mqtt", "rx": 1_700_000_000_000_000_000 + i, "topic": f"zigbee2mqtt/sensor_{i % 50}",
            "qos": 1, "retain": False, "pe": "utf8",
            "p": '{"battery":97,"humidity":48.21,"linkquality":120,"pressure":1012.4,'
                 '"temperature":21.53,"voltage":2995,"update":{"state":"idle"},"x":"' +
                 "y" * 60 + '"}'}


def produce(queue_dir: str, events: int, batch: int, result: mp.Queue) -> None:
    producer = Producer(queue_dir, "mqtt", max_bytes=2**40)
    template = [make_event(i) for i in range(batch)]
    started = time.perf_counter()
    for _ in range(events // batch):
        producer.append(template)
    result.put(("append", events / (time.perf_counter() - started)))


def consume(queue_dir: str, events: int, take: int, result: mp.Queue) -> None:
    consumer = Consumer(queue_dir, "mqtt")
    seen = 0
    started = None
    while seen < events:
        batches = consumer.take(take)
        if not batches:
            time.sleep(0.001)
            continue
        started = started or time.perf_counter()
        seen += sum(len(b.events) for b in batches)
        consumer.ack(b.item_id for b in batches)
    result.put(("drain", events / (time.perf_counter() - started)))


def run_pair(queue_dir: str, events: int, batch: int, concurrent: bool) -> dict:
    result: mp.Queue = mp.Queue()
    prod = mp.Process(target=produce, args=(queue_dir, events, batch, result))
    cons = mp.Process(target=consume, args=(queue_dir, events, 5 * batch, result))
    prod.start()
    if not concurrent:
        prod.join()
    cons.start()
    prod.join()
    cons.join()
    return dict(result.get() for _ in range(2))


def drain_only(queue_dir: str, events: int, batch: int) -> float:
    """Fill with the producer process, then time the consumer process alone."""
    return run_pair(queue_dir, events, batch, concurrent=False)["drain"]


def plain_persist_queue(queue_dir: str, events: int) -> dict:
    """persist-queue as its README shows it: one put per event, get + ack per event."""
    result: mp.Queue = mp.Queue()

    def put_all():
        q = SQLiteAckQueue(queue_dir, serializer=_Json, auto_resume=False, multithreading=True)
        event = make_event(0)
        started = time.perf_counter()
        for _ in range(events):
            q.put(event)
        result.put(("append", events / (time.perf_counter() - started)))

    def get_all():
        q = SQLiteAckQueue(queue_dir, serializer=_Json, auto_resume=True, multithreading=True)
        started = time.perf_counter()
        got = 0
        while got < events:
            try:
                item = q.get(block=False, raw=True)
            except Empty:
                time.sleep(0.001)
                continue
            q.ack(id=item["pqid"])
            got += 1
        result.put(("drain", events / (time.perf_counter() - started)))

    for target in (put_all, get_all):
        proc = mp.get_context("fork").Process(target=target)
        proc.start()
        proc.join()
    return dict(result.get() for _ in range(2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--aged", type=int, default=1_000_000)
    parser.add_argument("--plain-events", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where the queue files go (default: a tmp dir)")
    args = parser.parse_args()
    base = Path(args.dir or tempfile.mkdtemp(prefix="queue-bench-"))

    appends, drains, conc_appends, conc_drains = [], [], [], []
    for i in range(args.repeat):
        sequential = run_pair(str(base / f"seq{i}"), args.events, args.batch, concurrent=False)
        appends.append(sequential["append"])
        drains.append(sequential["drain"])
        both = run_pair(str(base / f"conc{i}"), args.events, args.batch, concurrent=True)
        conc_appends.append(both["append"])
        conc_drains.append(both["drain"])

    aged_dir = str(base / "aged")
    fresh_drain = drain_only(aged_dir, args.events, args.batch)
    passed = args.events
    while passed < args.aged:
        run_pair(aged_dir, args.events, args.batch, concurrent=True)
        passed += args.events
    aged_drain = drain_only(aged_dir, args.events, args.batch)

    plain = plain_persist_queue(str(base / "plain"), args.plain_events)
    out = {
        "append_events_per_s": round(statistics.median(appends)),
        "drain_events_per_s": round(statistics.median(drains)),
        "concurrent_append_events_per_s": round(statistics.median(conc_appends)),
        "concurrent_drain_events_per_s": round(statistics.median(conc_drains)),
        "fresh_drain_events_per_s": round(fresh_drain),
        "aged_drain_events_per_s": round(aged_drain),
        "events_through_aged_file": passed + args.events,
        "drain_decay_pct": round(100 * (1 - aged_drain / fresh_drain), 1),
        "plain_append_events_per_s": round(plain["append"]),
        "plain_drain_events_per_s": round(plain["drain"]),
        "ratio_append": round(statistics.median(appends) / plain["append"], 1),
        "ratio_drain": round(statistics.median(drains) / plain["drain"], 1),
        "event_bytes": len(_Json.dumps(make_event(0))),
        "batch_events": args.batch,
        "repeats": args.repeat,
        "aged_file_bytes": sum(p.stat().st_size for p in Path(aged_dir).glob("mqtt.db*")),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
