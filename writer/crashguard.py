"""Queue items that kill the writer are moved aside, so one item can never hold up a queue.

Whatever converting or encoding one event raises is already that event's dead letter
(``writer.conversion``). What is left is a writer process (or its converter process) that dies
while converting an item: a crash in a C library, the kernel's OOM killer, a loop the supervisor
kills for not ticking. Restarted, it would take the same item first and die again, for ever.

So while an item is being converted the writer records it in the queue file's meta table
(``writer.converting``: the item id and how many writers died on it before; ``mark``), and once
the round's items are converted it clears the record: a writer killed while it waits for
InfluxDB (an outage) never counts against an item. Which item is being converted is the
conversion's business (``writer.conversion``). A writer that starts and finds a record knows the previous one died
converting that item; when it takes that item again it counts one more death, and after
``queue.move_aside_after`` deaths in a row the item goes to the dead-letter store with the reason,
logged as an error. ``ha-ingestor queue dead-letter-item`` does the same by hand.
"""

from __future__ import annotations

import json
import logging

from ha_ingestor import metrics
from ha_ingestor.queue import Consumer

log = logging.getLogger("writer")

META_KEY = "writer.converting"


class CrashGuard:
    def __init__(self, move_aside_after: int):
        self.limit = move_aside_after
        self._found: dict[str, tuple[int, int]] = {}    # source -> (item, deaths) at start
        self._marked: dict[str, Consumer] = {}

    def opened(self, source: str, consumer: Consumer) -> None:
        """Read what a previous writer left in this queue file."""
        record = _parse(consumer.get_meta(META_KEY))
        if record is not None:
            item, deaths = record
            self._found[source] = record
            log.error("the previous writer died while converting item %d of the %s queue "
                      "(%d time(s) in a row; moved to the dead-letter store after %d)",
                      item, source, deaths + 1, self.limit)

    def check(self, source: str, consumer: Consumer, item_id: int) -> int | None:
        """Called with each item taken, before it goes to conversion: how many writers died
        converting it before. None: it killed ``move_aside_after`` of them and is now in the
        dead-letter store. (Called again after a full disk refused the move: same answer.)"""
        deaths = self._deaths(source, item_id)
        if deaths < self.limit:
            return deaths
        self._move_aside(source, consumer, item_id, deaths)
        del self._found[source]
        return None

    def mark(self, source: str, consumer: Consumer, item_id: int, deaths: int) -> None:
        """The item is being converted now: a death from here on counts against it."""
        consumer.set_meta(META_KEY, json.dumps({"item": item_id, "deaths": deaths}))
        self._marked[source] = consumer

    def converted(self) -> None:
        """Every item taken so far is converted: nothing is being converted any more. (A
        record the disk refused to clear is cleared at the next call.)"""
        for source, consumer in list(self._marked.items()):
            consumer.set_meta(META_KEY, "")
            del self._marked[source]

    def _deaths(self, source: str, item_id: int) -> int:
        found = self._found.get(source)
        if found is None or item_id < found[0]:
            return 0            # items are taken in id order: the one that killed comes later
        deaths = found[1] + 1 if item_id == found[0] else 0
        if deaths < self.limit:
            del self._found[source]
        return deaths

    def _move_aside(self, source: str, consumer: Consumer, item_id: int, deaths: int) -> None:
        reason = (f"moved aside: the writer died {deaths} times in a row while converting this "
                  f"item ({source} queue item {item_id}; queue.move_aside_after is {self.limit})")
        count = consumer.dead_letter_item(item_id, reason)
        consumer.set_meta(META_KEY, "")
        metrics.ITEMS_MOVED_ASIDE.labels(source=source).inc()
        metrics.DEAD_LETTERS.labels(source=source, reason="moved_aside").inc(count)
        log.error("item %d of the %s queue killed the writer %d times in a row while it was "
                  "being converted: its %d event(s) are now in the dead-letter store "
                  "(`ha-ingestor queue dead --source %s`), the queue goes on", item_id, source,
                  deaths, count, source)


def _parse(raw: str | None) -> tuple[int, int] | None:
    if not raw:
        return None
    try:
        record = json.loads(raw)
        return int(record["item"]), int(record["deaths"])
    except (ValueError, KeyError, TypeError):
        log.warning("ignoring an unreadable %s record in the queue file: %.100r", META_KEY, raw)
        return None
