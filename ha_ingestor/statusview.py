"""``ha-ingestor queue status``: the table, the JSON object, and ``--watch``, which refreshes the
table with each queue's drain rate and the time until it is empty.

Reads the queue files only (``read_status(queue_dir, source)``), so it is safe while everything
runs and needs nothing but the ``queue:`` section of the config.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import click

from ha_ingestor.drainrate import DrainRate, duration, thousands
from ha_ingestor.envelope import SOURCES

HEADER = (f"{'queue':<6} {'ready':>10} {'in flight':>10} {'dead':>8} {'oldest':>10} "
          f"{'on disk':>10}")
RATE_HEADER = f" {'drain/s':>9} {'empty in':>12}"


def as_json(statuses: dict, empty) -> str:
    return json.dumps({"queues": {s: (st or empty).as_dict() for s, st in statuses.items()}})


def table(queue_dir: Path, statuses: dict, rates: dict[str, DrainRate] | None = None) -> str:
    if not queue_dir.exists():
        return (f"queue directory {queue_dir} does not exist yet (no collector has run): "
                f"nothing queued")
    lines = [f"queue directory {queue_dir}", HEADER + (RATE_HEADER if rates else "")]
    for source, st in statuses.items():
        if st is None:
            lines.append(f"{source:<6} {'(no queue file yet)':>30}")
            continue
        row = (f"{source:<6} {st.ready:>10} {st.in_flight:>10} {st.dead:>8} "
               f"{age(st.oldest_age_s):>10} {size(st.bytes):>10}")
        if rates:
            row += _rate_cells(rates[source])
        lines.append(row)
    return "\n".join(lines)


def _rate_cells(rate: DrainRate) -> str:
    value = rate.rate()
    shown = "-" if value is None else thousands(value)
    eta = rate.eta()
    if eta is None and value is not None and value <= 0 and rate.samples[-1][1]:
        text = "not draining"
    else:
        text = duration(eta) if eta is not None else "-"
    return f" {shown:>9} {text:>12}"


def watch(queue_dir: Path, read: Callable[[], dict], every: float, count: int | None,
          clear: bool, clock=time.monotonic) -> None:
    """Print the table every ``every`` seconds (``count`` times, or until Ctrl-C)."""
    rates = {source: DrainRate(window=max(10.0, 5 * every)) for source in SOURCES}
    shown = 0
    try:
        while count is None or shown < count:
            statuses = read()
            now = clock()
            for source, st in statuses.items():
                if st is not None:
                    rates[source].add(st.ready + st.in_flight, now)
            if clear:
                click.clear()
            click.echo(f"{time.strftime('%Y-%m-%d %H:%M:%S')} (every {every:g} s, Ctrl-C "
                       f"stops)")
            click.echo(table(queue_dir, statuses, rates) + ("" if clear else "\n"))
            shown += 1
            if count is None or shown < count:
                time.sleep(every)
    except KeyboardInterrupt:
        return


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, width in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= width:
            return f"{seconds / width:.1f}{unit}"
    return f"{seconds:.1f}s"


def size(count: int) -> str:
    for unit, width in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= width:
            return f"{count / width:.1f}{unit}"
    return f"{count}B"
