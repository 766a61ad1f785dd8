"""The bounded in-memory hand-off between the socket reader, the catch-up work and the committer.

Live events: the reader must never wait on the disk (HA cuts off a client that leaves more than
1024 messages pending for 10 s, 4096 at once), so ``put_live`` never blocks. Up to ``max_events``
live events wait here; beyond that the configured policy drops the newest (incoming) or the oldest
(waiting) live events, and ``put_live`` returns them, so the collector can count them and restore
the state changes among them from HA's recorder later.

Catch-up work (backfilled state changes, resync snapshots) is the collector's own request, so it
is paced instead: ``put_catchup`` waits while ``catchup_max`` catch-up events are waiting. The two
are counted apart: catch-up work of any size never takes room from live events, so it can never
make one drop. Drops happen only when the committer cannot commit (the queue file is full).

Control items (callables) travel in the same FIFO: the committer runs one after it has committed
every event queued before it.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Callable

from ha_ingestor.envelope import KIND_LIVE

DROP_NEWEST = "drop_newest"
DROP_OLDEST = "drop_oldest"


class Control:
    """A FIFO marker: ``action()`` runs once everything queued before it is committed."""

    __slots__ = ("action",)

    def __init__(self, action: Callable[[], None]):
        self.action = action


def is_live(item: Any) -> bool:
    return not isinstance(item, Control) and item["kind"] == KIND_LIVE


class Handoff:
    def __init__(self, max_events: int, policy: str = DROP_NEWEST, catchup_max: int = 2000):
        if policy not in (DROP_NEWEST, DROP_OLDEST):
            raise ValueError(f"unknown full policy {policy!r}")
        self.max_events = max_events
        self.policy = policy
        self.catchup_max = catchup_max
        self.dropped = 0                   # live events, in total
        self._items: deque[Any] = deque()
        self._live = 0                     # live events waiting
        self._catchup = 0                  # catch-up events waiting
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)     # the committer waits for items
        self._room = threading.Condition(self._lock)      # catch-up work waits for room

    def __len__(self) -> int:
        return len(self._items)

    def put_live(self, envelopes: list[dict]) -> list[dict]:
        """Append live events without ever waiting; returns those dropped to stay within
        ``max_events`` (incoming ones by drop_newest, waiting ones by drop_oldest)."""
        with self._lock:
            room = self.max_events - self._live
            if room >= len(envelopes):
                dropped: list[dict] = []
                self._items.extend(envelopes)
            elif self.policy == DROP_NEWEST:
                kept = max(room, 0)
                self._items.extend(envelopes[:kept])
                dropped = envelopes[kept:]
            else:
                self._items.extend(envelopes)
                dropped = self._evict_oldest_live(len(envelopes) - room)
            self._live += len(envelopes) - len(dropped)
            self.dropped += len(dropped)
            self._ready.notify()
        return dropped

    def _evict_oldest_live(self, count: int) -> list[dict]:
        """Remove the ``count`` oldest live events; catch-up work and markers keep their place."""
        dropped: list[dict] = []
        kept: list[Any] = []
        while len(dropped) < count:
            item = self._items.popleft()
            (dropped if is_live(item) else kept).append(item)
        self._items.extendleft(reversed(kept))
        return dropped

    def put_catchup(self, envelopes: list[dict], timeout: float) -> bool:
        """Append catch-up events once fewer than ``catchup_max`` wait (a larger list goes in
        alone). False when ``timeout`` passed first: nothing was appended."""
        with self._lock:
            if self._catchup and self._catchup + len(envelopes) > self.catchup_max:
                self._room.wait(timeout)
                if self._catchup and self._catchup + len(envelopes) > self.catchup_max:
                    return False
            self._items.extend(envelopes)
            self._catchup += len(envelopes)
            self._ready.notify()
        return True

    def put_control(self, action: Callable[[], None]) -> None:
        with self._lock:
            self._items.append(Control(action))
            self._ready.notify()

    def take(self, max_items: int, timeout: float) -> list[Any]:
        """Up to ``max_items`` items, oldest first; waits up to ``timeout`` for the first one."""
        with self._lock:
            if not self._items:
                self._ready.wait(timeout)
            items = [self._items.popleft() for _ in range(min(max_items, len(self._items)))]
            live = sum(1 for item in items if is_live(item))
            catchup = sum(1 for item in items if not isinstance(item, Control)) - live
            self._live -= live
            if catchup:
                self._catchup -= catchup
                self._room.notify_all()
            return items

    def waiting_live(self) -> list[dict]:
        """The live events waiting, oldest first (a copy)."""
        with self._lock:
            return [item for item in self._items if is_live(item)]

    def oldest_live_rx(self) -> int | None:
        """Receive time (ns) of the oldest live event waiting, or None."""
        with self._lock:
            return next((item["rx"] for item in self._items if is_live(item)), None)

    def wake(self) -> None:
        with self._lock:
            self._ready.notify_all()
