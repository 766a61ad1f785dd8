"""The durable queue: one SQLite file per source, behind a small interface.

Every access to the queue files goes through this module, so a different backend can replace it.

How persist-queue is used, and why (see docs/architecture.md):

- An item is a *batch* of events (``{"n": <count>, "events": [...]}``): persist-queue commits once
  per ``put``, so one commit per batch is what makes tens of thousands of events per second possible.
- JSON serializer, never pickle: a queue file must never execute code when read.
- ``auto_resume`` only in the consumer: a restarted producer must not hand the writer's in-flight
  items back to the ready state (that would write them twice).
- Ack by id; counts by SQL (``qsize()`` is a per-process counter and wrong across processes); no
  blocking ``get`` across processes (the consumer polls).
- Acked rows are deleted regularly so that ``get`` and ``ack`` do not slow down as the file ages.

Beside persist-queue's table, each file holds two small tables of our own: ``dead_letters`` (events
InfluxDB or the collector rejected, with the reason) and ``meta`` (small durable key/values, e.g.
the newest ``time_fired`` the HA collector committed).
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import orjson
from persistqueue import SQLiteAckQueue
from persistqueue.exceptions import Empty

from ha_ingestor.errors import NoSuchItem, QueueError, QueueFull

log = logging.getLogger(__name__)

TABLE = "ack_queue_default"          # persist-queue's table for name="default"
STATUS_IN_FLIGHT = 2                 # persist-queue AckStatus.unack
STATUS_ACKED = 5                     # persist-queue AckStatus.acked
LOCK_TIMEOUT_S = 30.0                # SQLite busy timeout: wait this long for the other process
CLEAR_ACKED_EVERY = 50               # delete acked rows after this many acks...
CLEAR_ACKED_AFTER_S = 1.0            # ...or this long after the last clearing, whichever first
PAGE_SIZE = 65536                    # a 400 kB batch spans 7 pages, not 100: take/ack ~20% cheaper
WAL_LIMIT_BYTES = 16 * 2**20         # the write-ahead log is truncated to this after a checkpoint
FULL_RECHECK_S = 0.5                 # how often the producer re-measures the file against max_bytes

_DEAD_INSERT = "INSERT INTO dead_letters (event, reason, at) VALUES (?, ?, ?)"
_META_UPSERT = ("INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value")
_META_DELETE = "DELETE FROM meta WHERE key = ?"
_COUNT_PREFIX = re.compile(rb'\{"n":(\d+)')
T = TypeVar("T")


_STDLIB_MARK = "__stdlib_json"


class _Json:
    """persist-queue serializer: JSON, never pickle. orjson where it can (13x faster to encode,
    almost 2x to decode than the standard library, measured on queue items); the standard library
    for what orjson refuses: integers beyond 64 bits, and text that is not valid Unicode (a lone
    surrogate such as ``"\\ud800"`` in a Home Assistant frame), written as ASCII with ``\\u``
    escapes. So any JSON value round-trips."""

    @staticmethod
    def dumps(value: Any, sort_keys: bool = False) -> bytes:
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else 0)
        except TypeError:                      # orjson.JSONEncodeError: an int > 64 bits, ...
            if isinstance(value, dict):            # mark it: orjson would read such ints as floats
                value = {**value, _STDLIB_MARK: True}
            return json.dumps(value, separators=(",", ":"), ensure_ascii=True,
                              sort_keys=sort_keys).encode("ascii")

    @staticmethod
    def loads(data: bytes) -> Any:
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:         # "\ud800" escapes: only the standard library
            value = json.loads(data)
            if isinstance(value, dict):
                value.pop(_STDLIB_MARK, None)
            return value
        if isinstance(value, dict) and value.pop(_STDLIB_MARK, False):
            value = json.loads(data)
            value.pop(_STDLIB_MARK, None)
        return value


@dataclass(frozen=True)
class Batch:
    """One queue item as the consumer sees it."""

    item_id: int
    events: list[dict]
    enqueued_at: float


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


def _dead_rows(entries: Iterable[tuple[dict, str]]) -> list[tuple[str, str, float]]:
    now = time.time()
    return [(_Json.dumps(event).decode("utf-8"), str(reason), now) for event, reason in entries]


def _retry_locked(action: Callable[[], T], path: Path, what: str) -> T:
    """Run ``action``; SQLite's own busy timeout waits for the other process, and on top of that a
    few retries absorb "database is locked" under heavy contention. A full disk becomes QueueFull,
    anything else a QueueError naming the file."""
    for attempt in range(5):
        try:
            return action()
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if "disk is full" in text or "database or disk is full" in text:
                raise QueueFull(f"{path}: disk full while trying to {what}") from exc
            if "locked" not in text and "busy" not in text:
                raise QueueError(f"{path}: cannot {what}: {text}") from exc
            time.sleep(0.05 * (attempt + 1))
        except sqlite3.DatabaseError as exc:
            raise QueueError(f"{path}: cannot {what}: {exc} (is it a queue file?)") from exc
    raise QueueError(f"{path}: still locked by another process after retries; cannot {what}")


def _connect(path: Path, synchronous: str = "FULL") -> sqlite3.Connection:
    """Our own connection for counts, dead letters and meta (autocommit mode)."""
    conn = sqlite3.connect(str(path), timeout=LOCK_TIMEOUT_S, isolation_level=None,
                           check_same_thread=False)
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}")     # a new file only; before WAL is set
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
    conn.execute("CREATE TABLE IF NOT EXISTS dead_letters (id INTEGER PRIMARY KEY AUTOINCREMENT,"
                 " event TEXT NOT NULL, reason TEXT NOT NULL, at REAL NOT NULL)")
    conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    return conn


def _open(queue_dir: Path | str, source: str, auto_resume: bool, synchronous: str
          ) -> tuple[SQLiteAckQueue, sqlite3.Connection, Path]:
    path = queue_file(queue_dir, source)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise QueueError(f"{path.parent}: cannot create the queue directory: {exc}") from exc

    def open_both():
        conn = _connect(path, synchronous)
        queue = SQLiteAckQueue(str(path.parent), db_file_name=path.name, auto_resume=auto_resume,
                               serializer=_Json, multithreading=True, timeout=LOCK_TIMEOUT_S)
        for c in {queue._getter, queue._putter}:
            c.execute(f"PRAGMA synchronous={synchronous}")
            c.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
        return queue, conn

    queue, conn = _retry_locked(open_both, path, "open the queue")
    return queue, conn, path


class _QueueFile:
    """What producer and consumer share: the open file, dead letters, meta, status."""

    def __init__(self, queue_dir: Path | str, source: str, auto_resume: bool,
                 synchronous: str = "FULL"):
        self.source = source
        self._q, self._db, self.path = _open(queue_dir, source, auto_resume, synchronous)

    def dead_letter(self, entries: Iterable[tuple[dict, str]]) -> int:
        """Keep events with the reason they could not be written. Returns how many."""
        rows = _dead_rows(entries)
        if rows:
            _retry_locked(lambda: self._insert_dead(rows), self.path, "store dead letters")
        return len(rows)

    def _insert_dead(self, rows: list[tuple]) -> None:
        with _transaction(self._db):
            self._db.executemany(_DEAD_INSERT, rows)

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = _retry_locked(lambda: self._db.execute("SELECT value FROM meta WHERE key = ?",
                                                     (key,)).fetchone(), self.path, "read meta")
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        _retry_locked(lambda: self._db.execute(_META_UPSERT, (key, str(value))),
                      self.path, "write meta")

    def meta_items(self, prefix: str) -> dict[str, str]:
        """Every meta key/value whose key starts with ``prefix`` (a range scan of the key index:
        keys sort by their UTF-8 bytes, so the keys with the prefix lie between the prefix and
        the prefix with its last character raised by one)."""
        if not prefix:
            raise ValueError("meta_items needs a non-empty prefix")
        above = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        rows = _retry_locked(lambda: self._db.execute(
            "SELECT key, value FROM meta WHERE key >= ? AND key < ?", (prefix, above)).fetchall(),
            self.path, "read meta")
        return dict(rows)

    def status(self) -> QueueStatus:
        return _retry_locked(lambda: _status(self._db, self.path), self.path, "count events")

    def used_bytes(self) -> int:
        """Bytes of live pages (free pages are reused, so this is what counts against max_bytes)."""
        def measure():
            pages = self._db.execute("PRAGMA page_count").fetchone()[0]
            free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
            size = self._db.execute("PRAGMA page_size").fetchone()[0]
            return (pages - free) * size
        return _retry_locked(measure, self.path, "measure the queue")

    def close(self) -> None:
        self._q.close()
        self._db.close()


class Producer(_QueueFile):
    """The one writer of a queue file: a collector."""

    def __init__(self, queue_dir: Path | str, source: str, max_bytes: int):
        super().__init__(queue_dir, source, auto_resume=False)
        self.max_bytes = max_bytes
        self._full = False
        self._checked_at = 0.0

    def append(self, events: list[dict], meta: dict[str, str | None] | None = None) -> int:
        """Store ``events`` as one item in one durable commit. Returns the item id.

        ``meta`` key/values are written in the same transaction as the item, so they are durable
        exactly when the batch is (the HA collector's newest ``time_fired``, the MQTT collector's
        fingerprints of the batch it has not acknowledged to the broker yet, and what it stored
        last on each topic with retained messages). A value of None deletes the key.

        Raises QueueFull (nothing written) when the file is at ``max_bytes`` or the disk is full."""
        if not events:
            raise ValueError("append needs at least one event")
        if self.is_full():
            raise QueueFull(f"{self.path}: queue is full ({self.max_bytes} bytes, queue.max_bytes)")
        item = {"n": len(events), "events": events}
        if not meta:
            return _retry_locked(lambda: self._q.put(item), self.path, "append a batch")
        return _retry_locked(lambda: self._put_with_meta(item, meta), self.path, "append a batch")

    def _put_with_meta(self, item: dict, meta: dict[str, str | None]) -> int:
        """persist-queue's own insert (same table, same initial status) plus the meta upserts, in
        one transaction on its connection."""
        blob = _Json.dumps(item)
        with self._q.tran_lock, self._q._putter as conn:
            cursor = conn.execute(f"INSERT INTO {TABLE} (data, timestamp, status) "
                                  f"VALUES (?, ?, 0)", (blob, time.time()))
            conn.executemany(_META_UPSERT, [(k, str(v)) for k, v in meta.items()
                                            if v is not None])
            conn.executemany(_META_DELETE, [(k,) for k, v in meta.items() if v is None])
            return cursor.lastrowid

    def is_full(self) -> bool:
        """Whether the file is at ``max_bytes``; re-measured at most every FULL_RECHECK_S."""
        now = time.monotonic()
        if now - self._checked_at >= FULL_RECHECK_S:
            self._checked_at = now
            self._full = self.used_bytes() >= self.max_bytes
        return self._full


class Consumer(_QueueFile):
    """The one reader of a queue file: the writer. Items it took but did not ack before it died are
    ready again when it reopens the file (``auto_resume``)."""

    def __init__(self, queue_dir: Path | str, source: str):
        # synchronous=NORMAL: the consumer's commits (taken, acked) are not fsynced one by one.
        # A power cut can only lose a suffix of them, and then items are taken and written again:
        # identical points, the at-least-once contract. The producer's appends stay FULL.
        super().__init__(queue_dir, source, auto_resume=True, synchronous="NORMAL")
        self._acks = 0
        self._cleared_at = time.monotonic()
        self._cursor = 0                     # id of the last item taken (0: from the start)

    def take(self, max_events: int) -> list[Batch]:
        """Up to ``max_events`` events as whole items, oldest first; at least one item when any is
        ready. Never blocks: returns [] when nothing is ready."""
        batches: list[Batch] = []
        count = 0
        while count < max_events:
            raw = _retry_locked(self._get_one, self.path, "take a batch")
            if raw is None:
                break
            events = raw["data"]["events"]
            batches.append(Batch(raw["pqid"], events, raw["timestamp"]))
            count += len(events)
        return batches

    def _get_one(self) -> dict | None:
        # Start after the last item taken: persist-queue keeps ``status`` as the row's last
        # column, after the batch blob, so every row its query passes over (items in flight) costs
        # a walk of that row's overflow pages. From the cursor on, only the row taken is read.
        try:
            raw = self._q.get(block=False, raw=True, id=self._cursor, next_in_order=True)
        except Empty:
            return None
        self._cursor = raw["pqid"]
        # persist-queue keeps every taken item decoded in memory until it is acked; ack and nack
        # by id do not need that copy, and without it the writer can let events go once converted
        self._q._unack_cache.pop(raw["pqid"], None)
        return raw

    def ack(self, item_ids: Iterable[int],
            dead: Iterable[tuple[dict, str]] | None = None) -> None:
        """Mark items done once InfluxDB accepted their events. ``dead`` (event, reason) pairs
        from those items go to the dead-letter store in the same transaction, so a crash never
        stores them twice nor acks without them."""
        ids = [(item_id,) for item_id in item_ids]
        rows = _dead_rows(dead or ())
        if not ids and not rows:
            return
        _retry_locked(lambda: self._ack_all(ids, rows), self.path, "acknowledge a batch")
        self._acks += len(ids)
        now = time.monotonic()
        if self._acks >= CLEAR_ACKED_EVERY or now - self._cleared_at >= CLEAR_ACKED_AFTER_S:
            # by count for speed; by time so that a small file the producer finds full gets its
            # space back soon even when few (large) items pass
            self._acks, self._cleared_at = 0, now
            _retry_locked(lambda: self._q.clear_acked_data(max_delete=None, keep_latest=None),
                          self.path, "clear acknowledged rows")

    def _ack_all(self, ids: list[tuple[int]], dead_rows: list[tuple]) -> None:
        """persist-queue's ack (status acked) for every id, one transaction on its connection."""
        with self._q.tran_lock, self._q._putter as conn:
            if dead_rows:
                conn.executemany(_DEAD_INSERT, dead_rows)
            conn.executemany(f"UPDATE {TABLE} SET status = {STATUS_ACKED} WHERE _id = ?", ids)

    def nack(self, item_ids: Iterable[int]) -> None:
        """Give items back (ready again), e.g. on a graceful stop before they were written."""
        for item_id in item_ids:
            _retry_locked(lambda: self._q.nack(id=item_id), self.path, "return a batch")
        self._cursor = 0                     # they are behind the cursor: look from the start

    def dead_letter_item(self, item_id: int, reason: str) -> int:
        """Move every event of one item (taken or ready) to the dead-letter store with
        ``reason`` and remove the item, in one transaction. Returns the number of events."""
        count = _retry_locked(lambda: self._move_aside(item_id, reason), self.path,
                              "move an item to the dead-letter store")
        if count is None:
            raise NoSuchItem(f"{self.path}: no item {item_id} waiting in the queue")
        return count

    def _move_aside(self, item_id: int, reason: str) -> int | None:
        with self._q.tran_lock, self._q._putter as conn:
            return _move_item(conn, item_id, reason)

    def events_of(self, item_id: int) -> list[dict]:
        """The events of an item taken and not yet acked, read again from the file, so that the
        writer need not hold every event in memory while InfluxDB answers (it needs one back
        only to dead-letter it)."""
        row = _retry_locked(lambda: self._db.execute(
            f"SELECT data FROM {TABLE} WHERE _id = ?", (item_id,)).fetchone(),
            self.path, "re-read a batch")
        if row is None:
            raise QueueError(f"{self.path}: item {item_id} is no longer in the queue")
        return _Json.loads(row[0])["events"]


def _move_item(conn: sqlite3.Connection, item_id: int, reason: str) -> int | None:
    """Inside a transaction: the item's events into dead_letters, the item deleted. None when
    there is no such unacknowledged item."""
    row = conn.execute(f"SELECT data FROM {TABLE} WHERE _id = ? AND status < {STATUS_ACKED}",
                       (item_id,)).fetchone()
    if row is None:
        return None
    try:
        events = _Json.loads(row[0])["events"]
        rows = _dead_rows((event, reason) for event in events)
    except Exception as exc:  # noqa: BLE001 - an item that cannot be read is kept as its bytes
        raw = row[0] if isinstance(row[0], str) else bytes(row[0]).decode("utf-8", "replace")
        rows = _dead_rows([({"item": item_id, "unreadable": raw},
                            f"{reason} (the item could not be read: {exc})")])
    conn.executemany(_DEAD_INSERT, rows)
    conn.execute(f"DELETE FROM {TABLE} WHERE _id = ?", (item_id,))
    return len(rows)


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT on an autocommit connection."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, *_):
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                        (name,)).fetchone() is not None


def _status(conn: sqlite3.Connection, path: Path) -> QueueStatus:
    ready = in_flight = 0
    oldest = None
    if _has_table(conn, TABLE):
        rows = conn.execute(f"SELECT status, substr(data, 1, 24), timestamp FROM {TABLE} "
                            f"WHERE status < {STATUS_ACKED}").fetchall()
        for status, prefix, stamp in rows:
            n = _event_count(prefix)
            if int(status) == STATUS_IN_FLIGHT:
                in_flight += n
            else:
                ready += n
            oldest = stamp if oldest is None else min(oldest, stamp)
    dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0] \
        if _has_table(conn, "dead_letters") else 0
    age = None if oldest is None else max(0.0, round(time.time() - oldest, 3))
    return QueueStatus(ready, in_flight, dead, age, _bytes_on_disk(path))


def _event_count(prefix: bytes | str) -> int:
    if isinstance(prefix, str):
        prefix = prefix.encode("utf-8")
    match = _COUNT_PREFIX.match(prefix)
    return int(match.group(1)) if match else 1


def _bytes_on_disk(path: Path) -> int:
    total = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            total += Path(str(path) + suffix).stat().st_size
        except FileNotFoundError:
            pass
    return total


# ---- inspection and repair (the `ha-ingestor queue ...` commands) --------------------------------

def _inspect(queue_dir: Path | str, source: str) -> sqlite3.Connection | None:
    """Open an existing queue file for inspection; None when it does not exist."""
    path = queue_file(queue_dir, source)
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=LOCK_TIMEOUT_S,
                               isolation_level=None)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.DatabaseError as exc:
        raise QueueError(f"{path}: not a readable queue file: {exc}") from exc


def read_status(queue_dir: Path | str, source: str) -> QueueStatus | None:
    """Status of one queue file without creating it; None when it does not exist."""
    conn = _inspect(queue_dir, source)
    if conn is None:
        return None
    path = queue_file(queue_dir, source)
    try:
        return _retry_locked(lambda: _status(conn, path), path, "count events")
    finally:
        conn.close()


def peek(queue_dir: Path | str, source: str, limit: int = 10) -> list[dict]:
    """The oldest ``limit`` unacknowledged events, without taking them."""
    conn = _inspect(queue_dir, source)
    if conn is None or not _has_table(conn, TABLE):
        return []
    path = queue_file(queue_dir, source)
    try:
        events: list[dict] = []
        cursor = _retry_locked(lambda: conn.execute(
            f"SELECT data FROM {TABLE} WHERE status < {STATUS_ACKED} ORDER BY _id"), path, "peek")
        for (data,) in cursor:
            events.extend(_Json.loads(data)["events"][: limit - len(events)])
            if len(events) >= limit:
                break
        return events
    finally:
        conn.close()


def list_dead(queue_dir: Path | str, source: str, limit: int | None = None) -> list[DeadLetter]:
    conn = _inspect(queue_dir, source)
    if conn is None or not _has_table(conn, "dead_letters"):
        return []
    path = queue_file(queue_dir, source)
    try:
        sql = "SELECT id, reason, at, event FROM dead_letters ORDER BY id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        rows = _retry_locked(lambda: conn.execute(sql).fetchall(), path, "list dead letters")
        return [DeadLetter(i, source, reason, at, _Json.loads(event))
                for i, reason, at, event in rows]
    finally:
        conn.close()


def requeue_dead(queue_dir: Path | str, source: str, ids: Iterable[int] | None = None,
                 batch_events: int = 1000) -> int:
    """Put dead letters back into the queue as new items, then delete them from the dead-letter
    store. Returns how many were requeued. Crash-safe: an event is appended before it is deleted."""
    letters = list_dead(queue_dir, source)
    wanted = None if ids is None else set(ids)
    letters = [d for d in letters if wanted is None or d.id in wanted]
    if not letters:
        return 0
    producer = _QueueFile(queue_dir, source, auto_resume=False)
    try:
        for start in range(0, len(letters), batch_events):
            chunk = letters[start:start + batch_events]
            item = {"n": len(chunk), "events": [d.event for d in chunk]}
            _retry_locked(lambda: producer._q.put(item), producer.path, "requeue dead letters")
            ids_chunk = [(d.id,) for d in chunk]
            _retry_locked(lambda: producer._db.executemany(
                "DELETE FROM dead_letters WHERE id = ?", ids_chunk), producer.path,
                "delete requeued dead letters")
        return len(letters)
    finally:
        producer.close()


def dead_letter_item(queue_dir: Path | str, source: str, item_id: int, reason: str) -> int:
    """Move one item's events (taken or ready) to the dead-letter store with ``reason`` and
    remove the item, in one transaction: the repair for an item that keeps a writer from making
    progress. Returns the number of events; QueueError when there is no such item."""
    conn = _inspect(queue_dir, source)
    path = queue_file(queue_dir, source)
    if conn is None:
        raise QueueError(f"{path}: no such queue file")
    try:
        if not _has_table(conn, TABLE):
            raise NoSuchItem(f"{path}: no item {item_id} waiting in the queue")

        def move() -> int | None:
            with _transaction(conn):
                return _move_item(conn, item_id, reason)
        count = _retry_locked(move, path, "move an item to the dead-letter store")
    finally:
        conn.close()
    if count is None:
        raise NoSuchItem(f"{path}: no item {item_id} waiting in the queue (written already, or "
                         "never there)")
    return count


def purge(queue_dir: Path | str, source: str, dead: bool = False) -> int:
    """Delete every unacknowledged event (and with ``dead`` the dead letters). Returns events
    deleted. Only for an operator who means it: ``queue purge --yes``."""
    conn = _inspect(queue_dir, source)
    if conn is None:
        return 0
    path = queue_file(queue_dir, source)
    try:
        before = _retry_locked(lambda: _status(conn, path), path, "count events")
        removed = before.ready + before.in_flight

        def delete():
            with _transaction(conn):
                if _has_table(conn, TABLE):
                    conn.execute(f"DELETE FROM {TABLE}")
                if dead and _has_table(conn, "dead_letters"):
                    conn.execute("DELETE FROM dead_letters")
        _retry_locked(delete, path, "purge")
        return removed + (before.dead if dead else 0)
    finally:
        conn.close()
