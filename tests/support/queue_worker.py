"""A producer or consumer process for the queue contract tests:

    python -m tests.support.queue_worker produce DIR BATCHES BATCH_SIZE [--seconds S] [--rate R]
    python -m tests.support.queue_worker consume DIR OUT_FILE [--hold] [--seconds S]
    python -m tests.support.queue_worker requeue DIR

The producer writes events ``{"seq": N, "batch": B, ...}`` and prints ``committed B`` (flushed)
after each append returned. The consumer appends every taken event's seq to OUT_FILE and prints
``took <item ids>`` before acking; with ``--hold`` it takes once and never acks. ``requeue``
prints ``requeueing`` and puts every dead letter back (``queue requeue-dead``).
"""

from __future__ import annotations

import sys
import time

from ha_ingestor.queue import Consumer, Producer, requeue_dead

SOURCE = "mqtt"
PAD = "x" * 200


def produce(queue_dir: str, batches: int, batch_size: int, seconds: float,
            rate: float | None) -> None:
    producer = Producer(queue_dir, SOURCE, max_bytes=2**40)
    started = time.monotonic()
    deadline = started + seconds
    seq = 0
    for batch in range(batches):
        if time.monotonic() > deadline:
            break
        if rate:                                  # steady load: at most `rate` events/s
            time.sleep(max(0.0, started + seq / rate - time.monotonic()))
        events = [{"src": "mqtt", "seq": seq + i, "batch": batch, "pad": PAD}
                  for i in range(batch_size)]
        producer.append(events)
        seq += batch_size
        print(f"committed {batch}", flush=True)
    print("done", flush=True)


def consume(queue_dir: str, out_file: str, hold: bool, seconds: float) -> None:
    consumer = Consumer(queue_dir, SOURCE)
    deadline = time.monotonic() + seconds
    idle_since = None
    with open(out_file, "a") as out:
        while time.monotonic() < deadline:
            batches = consumer.take(2000)
            if not batches:
                idle_since = idle_since or time.monotonic()
                if hold is False and time.monotonic() - idle_since > 3.0:
                    break
                time.sleep(0.01)
                continue
            idle_since = None
            out.write("".join(f"{e['seq']}\n" for b in batches for e in b.events))
            out.flush()
            print("took " + " ".join(str(b.item_id) for b in batches), flush=True)
            if hold:
                time.sleep(3600)
            consumer.ack(b.item_id for b in batches)
    print("done", flush=True)


def main(argv: list[str]) -> None:
    seconds = float(argv[argv.index("--seconds") + 1]) if "--seconds" in argv else 3600.0
    rate = float(argv[argv.index("--rate") + 1]) if "--rate" in argv else None
    if argv[0] == "produce":
        produce(argv[1], int(argv[2]), int(argv[3]), seconds, rate)
    elif argv[0] == "requeue":
        print("requeueing", flush=True)
        print(f"requeued {requeue_dead(argv[1], SOURCE)}", flush=True)
    else:
        consume(argv[1], argv[2], "--hold" in argv, seconds)


if __name__ == "__main__":
    main(sys.argv[1:])
