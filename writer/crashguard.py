"""Queue items that kill the writer are moved aside, so one item can never hold up a queue.

Whatever converting or encoding one event raises is already that event's dead letter
(``writer.loop``). What is left is a writer process that dies while converting an item: a crash
in a C library, the kernel's OOM killer, a loop the supervisor kills for not ticking. Restarted,
it would take the same item first and die again, for ever.

So before converting an item the writer records it in the queue file's meta table
(``writer.converting``: the item id and how many writers died on it before), and once the round's
items are converted it clears the record: a writer killed while it waits for InfluxDB (an outage)
never counts against an item. A writer that starts and finds a record knows the previous one died
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

    def before(self, source: str, consumer: Consumer, item_id: int) -> bool:
        """Called with each item taken, before it is converted. False: the item has killed the
        writer ``move_aside_after`` times and was moved to the dead-letter store."""
        deaths = self._deaths(source, item_id)
        if deaths >= self.limit:
            self._move_aside(source, consumer, item_id, deaths)
            return False
        consumer.set_meta(META_KEY, json.dumps({"item": item_id, "deaths": deaths}))
        self._marked[source] = consumer
        return True

    def converted(self) -> None:
        """Every item taken so far is converted: nothing is being converted any more."""
        for consumer in self._marked.values():
            consumer.set_meta(META_KEY, "")
        self._marked.clear()

    def _deaths(self, source: str, item_id: int) -> int:
        found = self._found.get(source)
        if found is None or item_id < found[0]:
            return 0            # items are taken in id order: the one that killed comes later
        del self._found[source]
        return found[1] + 1 if item_id == found[0] else 0

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
