"""Messages received from the broker and not yet committed: the hand-off between the network thread
(which receives) and the committer thread (which commits, then returns the acknowledgements).

Only the network thread calls ``put``, ``discard_unacked`` and ``room``; only the committer calls
``take`` and ``release``; either calls ``poke``. Every method holds one lock for a few list
operations.

``generation`` counts connections. A packet id (mid) means something only on the connection that
delivered it, so acknowledgements of a batch taken before a reconnect are dropped: the broker
re-sends those messages (duplicates of at most one batch, never a loss).
"""

from __future__ import annotations

import threading
import time

# An MQTT 3.1.1 broker does not tell us its in-flight window (Mosquitto's max_inflight_messages,
# default 20). When the socket runs dry while we hold at least this many unacknowledged messages,
# the broker is probably waiting for our PUBACKs: commit now instead of lingering.
STALL_HINT = 20


class Inbox:
    def __init__(self, batch_events: int, batch_interval: float, batch_bytes: int,
                 max_held: int, max_held_bytes: int, commit_on_stall: bool):
        self.batch_events = max(1, batch_events)
        self.batch_interval = max(0.0, batch_interval)
        self.batch_bytes = batch_bytes
        self.max_held = max_held
        self.max_held_bytes = max_held_bytes
        self.commit_on_stall = commit_on_stall
        self.generation = 0
        self._cond = threading.Condition(threading.Lock())
        self._items: list = []          # (received_ns, paho MQTTMessage), oldest first
        self._bytes = 0                 # payload bytes in _items
        self._first_at = 0.0            # monotonic time the oldest item arrived
        self._stalled = False
        self._closing = False
        self._poked = False
        self.held = 0                   # received, not yet released by the committer
        self.held_bytes = 0

    # --- network thread ------------------------------------------------------------------------

    def put(self, items: list, drained: bool) -> None:
        """Hand over a burst of received messages. ``drained``: the socket has nothing more now."""
        size = 0
        for _rx, msg in items:
            size += len(msg.payload)
        with self._cond:
            if not self._items:
                self._first_at = time.monotonic()
            self._items.extend(items)
            self._bytes += size
            self.held += len(items)
            self.held_bytes += size
            if drained and self.commit_on_stall and self.held >= STALL_HINT:
                self._stalled = True
            self._cond.notify()

    def room(self) -> bool:
        """May the network thread read more? Bounds memory when commits cannot keep up (QoS 0
        floods, a full queue, large payloads)."""
        return self.held < self.max_held and self.held_bytes < self.max_held_bytes

    def discard_unacked(self) -> int:
        """The connection is gone: drop the uncommitted QoS 1/2 messages (the broker re-sends
        them) and start a new generation. QoS 0 messages are kept: nobody re-sends those."""
        with self._cond:
            self.generation += 1
            keep = [item for item in self._items if not item[1].qos]
            dropped = len(self._items) - len(keep)
            if dropped:
                kept_bytes = sum(len(msg.payload) for _rx, msg in keep)
                self.held -= dropped
                self.held_bytes -= self._bytes - kept_bytes
                self._items, self._bytes = keep, kept_bytes
            return dropped

    def poke(self) -> None:
        """Have ``take`` return at once, with an empty batch if none is due (the committer has
        other work: a meta value to write)."""
        with self._cond:
            self._poked = True
            self._cond.notify()

    def close(self) -> None:
        """Stop: the committer takes whatever is left without waiting, then ``take`` returns None."""
        with self._cond:
            self._closing = True
            self._cond.notify()

    # --- committer thread ----------------------------------------------------------------------

    def take(self) -> tuple[list, int] | None:
        """Block until a batch is due (``batch_events`` messages, ``batch_bytes`` of payload,
        ``batch_interval`` since the oldest arrived, or a stalled broker); return it with its
        generation; an empty batch after ``poke``. None once closed and empty."""
        with self._cond:
            while True:
                if self._items and self._due():
                    return self._cut(), self.generation
                if self._poked:
                    self._poked = False
                    return [], self.generation
                if self._closing and not self._items:
                    return None
                timeout = None
                if self._items:
                    timeout = self._first_at + self.batch_interval - time.monotonic()
                self._cond.wait(timeout)

    def release(self, count: int, size: int) -> None:
        """The committer is done with ``count`` messages (committed and acks handed back, or
        dropped)."""
        with self._cond:
            self.held -= count
            self.held_bytes -= size

    def stale(self, generation: int) -> bool:
        return generation != self.generation

    # --- helpers (lock held) -------------------------------------------------------------------

    def _due(self) -> bool:
        return (self._closing or self._stalled or len(self._items) >= self.batch_events
                or self._bytes >= self.batch_bytes
                or time.monotonic() - self._first_at >= self.batch_interval)

    def _cut(self) -> list:
        items = self._items
        if len(items) > self.batch_events or self._bytes > self.batch_bytes:
            count, size = 0, 0
            for _rx, msg in items:
                if count and (count >= self.batch_events or size >= self.batch_bytes):
                    break
                count += 1
                size += len(msg.payload)
            batch, self._items = items[:count], items[count:]
            self._bytes -= size
        else:
            batch, self._items, self._bytes = items, [], 0
        if self._items:  # the oldest left behind arrived this long ago
            self._first_at = time.monotonic() - (time.time_ns() - self._items[0][0]) / 1e9
        self._stalled = False
        return batch
