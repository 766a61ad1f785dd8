"""The durable queue: one file per source, one producer and one consumer per file.

The interface every other part of the project uses, and nothing else of the queue:

- ``Producer`` (a collector): ``append`` a batch of events in one durable commit, ``is_full``,
  ``dead_letter``, ``get_meta``/``set_meta``/``meta_items``, ``status``, ``close``;
  ``unstorable`` says why an event cannot be stored.
- ``Consumer`` (the writer): ``take`` whole items, ``ack`` (with dead letters, one transaction),
  ``nack``, ``events_of`` an item in flight, ``dead_letter_item``, and the same meta/status;
  ``decode_events`` (UnreadableItem for an item whose bytes cannot be decoded, which is kept
  as ``unreadable_letter``).
- The repair functions behind ``ha-ingestor queue ...``: ``read_status``, ``peek``,
  ``list_dead``, ``requeue_dead``, ``purge``, ``dead_letter_item``.

What the interface promises (docs/architecture.md):

- An item is a *batch* of events, stored in one commit: all of it or none survives a crash.
- Exactly one producer process and one consumer process per file, enforced by OS locks
  (``ownership.py``): a second one exits 4 naming the first one's pid.
- Items the consumer took but did not acknowledge are ready again when it reopens the file.
- Files are private: the directory 0700, every file 0600 (``disk.py``).
- Bounded: ``max_bytes`` counts everything the file puts on disk (live pages, the write-ahead
  log at its bound, SQLite's shared-memory file), and the producer also stops while less than
  ``HEADROOM_BYTES`` is free on the filesystem, so that the consumer can still take and
  acknowledge (which frees space) when the disk is full.

The storage behind it is ``sqlite_backend.SQLiteStore`` (SQLite through persist-queue); a
different backend would implement the same store operations.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

from ha_ingestor.errors import DiskFull, NoSuchItem, QueueError, QueueFull, UnreadableItem
from ha_ingestor.queue import disk, ownership
from ha_ingestor.queue.ownership import CONSUMER, PRODUCER
from ha_ingestor.queue.serializer import _Json, decode_events, unreadable_letter
from ha_ingestor.queue.sqlite_backend import (SQLiteStore, dead_rows, wal_bytes_for,
                                               wal_file_bytes)

__all__ = ["Producer", "Consumer", "Batch", "decode_events", "unreadable_letter", "unstorable",
           "QueueStatus", "DeadLetter", "QueueError", "QueueFull", "DiskFull", "NoSuchItem",
           "UnreadableItem", "queue_file", "hold_role", "read_status", "peek", "list_dead",
           "requeue_dead", "purge", "dead_letter_item", "PRODUCER", "CONSUMER",
           "HEADROOM_BYTES"]

FULL_RECHECK_S = 0.5                 # how often the producer re-measures the file and the disk
UPKEEP_S = 1.0                       # how often the consumer shrinks a drained file, follows
                                     # the producer's checkpoint interval
HEADROOM_BYTES = 8 * 2**20           # left free on the filesystem for the consumer's commits,
                                     # or the write-ahead log's bound if that is more
SHM_BYTES = 32 * 1024                # SQLite's shared-memory file beside a file in WAL mode


@dataclass(frozen=True)
class Batch:
    """One queue item as the consumer sees it: its id, the stored JSON, when it was appended,
    how many events it holds, and the events, decoded on first use (so the writer can hand
    ``data`` to a converter process without decoding it)."""

    item_id: int
    data: bytes = field(repr=False)
    enqueued_at: float
    count: int

    @cached_property
    def events(self) -> list[dict]:
        return decode_events(self.data)


@dataclass(frozen=True)
class QueueStatus:
    """Counts are events, not batches. ``bytes`` is the size of the file(s) on disk."""

    ready: int
    in_flight: int
    dead: int
    oldest_age_s: float | None
    bytes: int

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DeadLetter:
    id: int
    source: str
    reason: str
    at: float
    event: dict


def queue_file(queue_dir: Path | str, source: str) -> Path:
    return Path(queue_dir) / f"{source}.db"


def unstorable(event: Any) -> str | None:
    """Why ``event`` cannot be stored in a queue file, or None when it can (every decoded JSON
    value can, up to the nesting Python's json module handles)."""
    try:
        _Json.dumps(event)
    except Exception as exc:  # noqa: BLE001 - any failure is the reason
        return f"cannot be stored in the queue: {type(exc).__name__}: {str(exc)[:200]}"
    return None


def hold_role(queue_dir: Path | str, source: str, role: str, owner: str) -> ownership.RoleLock:
    """Take a role on a source's file before the file exists (the writer claims every source at
    start); QueueError (exit 4) naming the holder if another process has it."""
    path = queue_file(queue_dir, source)
    disk.private_dir(path.parent)
    return ownership.acquire(path, role, owner)


class _QueueFile:
    """What producer and consumer share: the role's lock, the open file, dead letters, meta."""

    def __init__(self, queue_dir: Path | str, source: str, role: str, owner: str,
                 synchronous: str, resume: bool, wal_bytes: int | None):
        self.source = source
        self.path = queue_file(queue_dir, source)
        self._lock = hold_role(queue_dir, source, role, owner)
        try:                               # the lock first: resuming items belongs to the owner
            self._store = SQLiteStore(self.path, synchronous, resume, wal_bytes)
        except BaseException:
            self._lock.release()
            raise

    def dead_letter(self, entries: Iterable[tuple[dict, str]]) -> int:
        """Keep events with the reason they could not be written. Returns how many."""
        rows = dead_rows(entries)
        if rows:
            self._store.dead_letter(rows)
        return len(rows)

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        value = self._store.get_meta(key)
        return default if value is None else value

    def set_meta(self, key: str, value: str) -> None:
        self._store.set_meta(key, str(value))

    def meta_items(self, prefix: str) -> dict[str, str]:
        """Every meta key/value whose key starts with ``prefix`` (non-empty)."""
        return self._store.meta_items(prefix)

    def status(self) -> QueueStatus:
        return _status(self._store, self.path)

    def close(self) -> None:
        try:
            self._store.close()
        finally:
            self._lock.release()


class Producer(_QueueFile):
    """The one writer of a queue file: a collector. Appends are fsynced (``synchronous=FULL``):
    ``append`` returns once the batch survives a power cut."""

    def __init__(self, queue_dir: Path | str, source: str, max_bytes: int,
                 owner: str | None = None):
        super().__init__(queue_dir, source, PRODUCER, owner or f"the {source} collector",
                         synchronous="FULL", resume=False, wal_bytes=wal_bytes_for(max_bytes))
        self.max_bytes = max_bytes
        self._checked_at = float("-inf")
        self._used = self._room = self._pending = 0

    def append(self, events: list[dict], meta: dict[str, str | None] | None = None) -> int:
        """Store ``events`` as one item in one durable commit. Returns the item id.

        ``meta`` key/values are written in the same transaction as the item, so they are durable
        exactly when the batch is (the HA collector's newest ``time_fired``, the MQTT collector's
        fingerprints of the batch it has not acknowledged to the broker yet, and what it stored
        last on each topic with retained messages). A value of None deletes the key.

        Raises QueueFull (nothing written) at ``max_bytes``, DiskFull when the filesystem is
        down to its headroom or refuses the write."""
        if not events:
            raise ValueError("append needs at least one event")
        data = _Json.dumps({"n": len(events), "events": events})
        error = self._full_error(len(data))
        if error is not None:
            raise error
        item_id = self._store.append(data, len(events), meta)
        self._pending += len(data)
        return item_id

    def is_full(self) -> bool:
        """Whether the file is at ``max_bytes`` or the disk at its headroom; the file and the
        disk are re-measured at most every FULL_RECHECK_S, appends counted in between."""
        return self._full_error(0) is not None

    def _full_error(self, size: int) -> QueueFull | None:
        self._measure()
        if self._used + self._pending + size > self.max_bytes:
            return QueueFull(f"{self.path}: queue is full ({self.max_bytes} bytes, "
                             f"queue.max_bytes)")
        room = self._room - self._pending - size
        if room < self.headroom:
            return DiskFull(f"{self.path}: the filesystem is full ({max(0, room)} bytes left; "
                            f"{self.headroom} are kept free for the writer)")
        return None

    @property
    def headroom(self) -> int:
        return max(HEADROOM_BYTES, wal_file_bytes(self._store.wal_bytes))

    def _measure(self) -> None:
        """Live pages, the WAL and free space; again after a WAL's worth of appends, so the WAL
        cannot outgrow the headroom between two measurements."""
        now = time.monotonic()
        if now - self._checked_at < FULL_RECHECK_S and self._pending < self._store.wal_bytes:
            return
        live, reusable = self._store.page_usage()
        wal = max(self._store.wal_size(), wal_file_bytes(self._store.wal_bytes))
        self._used = live + wal + SHM_BYTES
        self._room = disk.free_bytes(self.path.parent) + reusable
        self._pending = 0
        self._checked_at = now


class Consumer(_QueueFile):
    """The one reader of a queue file: the writer. Items it took but did not ack before it died are
    ready again when it reopens the file."""

    def __init__(self, queue_dir: Path | str, source: str, owner: str = "the writer"):
        # synchronous=NORMAL: the consumer's commits (taken, acked) are not fsynced one by one.
        # A power cut can only lose a suffix of them, and then items are taken and written again:
        # identical points, the at-least-once contract. The producer's appends stay FULL.
        super().__init__(queue_dir, source, CONSUMER, owner, synchronous="NORMAL", resume=True,
                         wal_bytes=None)
        self._cursor = 0                     # id of the last item taken (0: from the start)
        self._upkeep_at = time.monotonic()

    def take(self, max_events: int) -> list[Batch]:
        """Up to ``max_events`` events as whole items, oldest first; at least one item when any is
        ready. Never blocks: returns [] when nothing is ready."""
        self._upkeep()
        batches: list[Batch] = []
        count = 0
        while count < max_events:
            taken = self._store.take_after(self._cursor)
            if taken is None:
                break
            self._cursor = taken.item_id
            batches.append(Batch(taken.item_id, taken.data, taken.enqueued_at, taken.events))
            count += taken.events
        return batches

    def ack(self, item_ids: Iterable[int],
            dead: Iterable[tuple[dict, str]] | None = None) -> None:
        """Items done once InfluxDB accepted their events: deleted. ``dead`` (event, reason) pairs
        from those items go to the dead-letter store in the same transaction, so a crash never
        stores them twice nor acks without them. An id no longer in the file is ignored."""
        ids, rows = list(item_ids), dead_rows(dead or ())
        if ids or rows:
            self._store.ack(ids, rows)

    def _upkeep(self) -> None:
        """Once a second: follow the producer's checkpoint interval; give the free pages of a
        drained file back to the filesystem (the other queue files need them on a full disk)."""
        now = time.monotonic()
        if now - self._upkeep_at >= UPKEEP_S:
            self._upkeep_at = now
            self._store.follow_wal_bytes()
            self._store.shrink()

    def nack(self, item_ids: Iterable[int]) -> None:
        """Give items back (ready again), e.g. on a graceful stop before they were written."""
        self._store.nack(list(item_ids))
        self._cursor = 0                     # they are behind the cursor: look from the start

    def events_of(self, item_id: int) -> list[dict] | None:
        """The events of an item taken and not yet acked, read again from the file, so that the
        writer need not hold every event in memory while InfluxDB answers (it needs one back
        only to dead-letter it). None when the item is gone (purged by an operator)."""
        data = self._store.data_of(item_id)
        return None if data is None else decode_events(data)

    def dead_letter_item(self, item_id: int, reason: str) -> int:
        """Move every event of one item (taken or ready) to the dead-letter store with
        ``reason`` and remove the item, in one transaction. Returns how many events; NoSuchItem
        when the item is not in the file."""
        count = self._store.dead_letter_item(item_id, reason)
        if count is None:
            raise NoSuchItem(f"{self.path}: no item {item_id} waiting in the queue")
        return count


def _status(store: SQLiteStore, path: Path) -> QueueStatus:
    ready, in_flight, oldest, dead = store.counts()
    age = None if oldest is None else max(0.0, round(time.time() - oldest, 3))
    return QueueStatus(ready, in_flight, dead, age, disk.bytes_on_disk(path))


# ---- inspection and repair (the `ha-ingestor queue ...` commands) --------------------------------
# Safe while the collectors and the writer run: each is one short transaction, and none takes a
# role (they do not hold the file).

class _Existing:
    """``with _Existing(dir, source) as store``: the store of a file that exists, else None."""

    def __init__(self, queue_dir: Path | str, source: str):
        self.path = queue_file(queue_dir, source)
        self.store: SQLiteStore | None = None

    def __enter__(self) -> SQLiteStore | None:
        if self.path.exists():
            self.store = SQLiteStore(self.path, synchronous="FULL", resume=False)
        return self.store

    def __exit__(self, *_exc) -> None:
        if self.store is not None:
            self.store.close()


def read_status(queue_dir: Path | str, source: str) -> QueueStatus | None:
    """Status of one queue file without creating it; None when it does not exist."""
    with _Existing(queue_dir, source) as store:
        return None if store is None else _status(store, store.path)


def peek(queue_dir: Path | str, source: str, limit: int = 10) -> list[dict]:
    """The oldest ``limit`` unacknowledged events, without taking them."""
    with _Existing(queue_dir, source) as store:
        return [] if store is None else store.peek(limit)


def list_dead(queue_dir: Path | str, source: str, limit: int | None = None) -> list[DeadLetter]:
    with _Existing(queue_dir, source) as store:
        rows = [] if store is None else store.dead_letters(limit)
    return [DeadLetter(i, source, reason, at, _Json.loads(event.encode("utf-8")))
            for i, reason, at, event in rows]


def requeue_dead(queue_dir: Path | str, source: str, ids: Iterable[int] | None = None,
                 batch_events: int = 1000) -> int:
    """Put dead letters back into the queue as new items and delete them from the dead-letter
    store, in one transaction. Returns how many were requeued."""
    with _Existing(queue_dir, source) as store:
        return 0 if store is None else store.requeue_dead(ids, batch_events)


def purge(queue_dir: Path | str, source: str, dead: bool = False) -> int:
    """Delete every unacknowledged event (and with ``dead`` the dead letters). Returns events
    deleted. Only for an operator who means it: ``queue purge --yes``."""
    with _Existing(queue_dir, source) as store:
        return 0 if store is None else sum(store.purge(dead))


def dead_letter_item(queue_dir: Path | str, source: str, item_id: int, reason: str) -> int:
    """Move one item's events (taken or ready) to the dead-letter store with ``reason`` and
    remove the item, in one transaction: the repair for an item that keeps a writer from making
    progress. Returns how many events; QueueError when there is no such file, NoSuchItem (a
    usage error, exit 2) when there is no such item."""
    with _Existing(queue_dir, source) as store:
        if store is None:
            raise QueueError(f"{queue_file(queue_dir, source)}: no such queue file")
        count = store.dead_letter_item(item_id, reason)
    if count is None:
        raise NoSuchItem(f"{queue_file(queue_dir, source)}: no item {item_id} waiting in the "
                         f"queue (written already, or never there)")
    return count
