"""The bounded in-memory hand-off between the socket reader and the committer.

The reader must never wait on the disk: HA cuts off a client that leaves more than 1024 messages
pending for 10 s (4096 at once). So ``put_many`` never blocks; when the hand-off holds
``max_events``, the configured policy drops the newest (incoming) or the oldest (waiting) events,
and every drop is counted.

Besides events, the FIFO carries *control* items (callables): the committer runs one after it has
committed every event queued before it, which is how the collector learns that a backfill is
durable.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Callable

DROP_NEWEST = "drop_newest"
DROP_OLDEST = "drop_oldest"


class Control:
    """A FIFO marker: ``action()`` runs once everything queued before it is committed."""

    __slots__ = ("action",)

    def __init__(self, action: Callable[[], None]):
        self.action = action


class Handoff:
    def __init__(self, max_events: int, policy: str = DROP_NEWEST):
        if policy not in (DROP_NEWEST, DROP_OLDEST):
            raise ValueError(f"unknown full policy {policy!r}")
        self.max_events = max_events
        self.policy = policy
        self.dropped = 0                   # total, for logs and tests
        self._items: deque[Any] = deque()
        self._cond = threading.Condition()

    def __len__(self) -> int:
        return len(self._items)

    def put_many(self, items: list[Any], force: bool = False) -> int:
        """Append ``items``; returns how many events were dropped to respect ``max_events``.
        ``force`` (backfill and resync, already in memory) bypasses the bound."""
        with self._cond:
            room = len(items) if force else self.max_events - len(self._items)
            dropped = self._make_room(items, room)
            self._cond.notify()
        return dropped

    def _make_room(self, items: list[Any], room: int) -> int:
        if room >= len(items):
            self._items.extend(items)
            return 0
        if self.policy == DROP_NEWEST:
            kept = max(room, 0)
            self._items.extend(items[:kept])
            dropped = len(items) - kept
        else:
            self._items.extend(items)
            dropped, markers = 0, []
            while len(self._items) - len(markers) > self.max_events and self._items:
                item = self._items.popleft()
                if isinstance(item, Control):
                    markers.append(item)   # a marker is not an event: keep it, in order
                else:
                    dropped += 1
            self._items.extendleft(reversed(markers))
        self.dropped += dropped
        return dropped

    def put_control(self, action: Callable[[], None]) -> None:
        with self._cond:
            self._items.append(Control(action))
            self._cond.notify()

    def take(self, max_items: int, timeout: float) -> list[Any]:
        """Up to ``max_items`` items, oldest first; waits up to ``timeout`` for the first one."""
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            count = min(max_items, len(self._items))
            return [self._items.popleft() for _ in range(count)]

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()
