"""The queue's storage: one SQLite file per source, through persist-queue. The only module that
names persist-queue.

persist-queue's ``SQLiteAckQueue`` keeps an item in one row (``_id, data, timestamp, status``),
so taking or acknowledging an item rewrites the row with its whole blob. ``BatchQueue`` is
persist-queue's ack queue extended the way its own subclasses are (``FILOSQLiteAckQueue``,
``UniqueAckQ``: table name, SQL templates, a few methods) with a layout of its own:

- ``batch_index`` (persist-queue's table): ``_id``, ``timestamp``, ``status``, ``events`` (the
  item's event count). Taking and acknowledging update or delete this small row only.
- ``batch_data``: ``_id``, ``data`` (the JSON batch), written once and read once; a trigger
  deletes it with its index row.
- ``dead_letters`` (event, reason, time) and ``meta`` (small durable key/values).

Statuses are persist-queue's (``AckStatus``); an acknowledged item is deleted at once, so the
table never fills with acked rows. The format is versioned (``meta`` key ``queue.format``) and a
file of format 1 (one persist-queue table) is migrated on open: see ``schema.py``.

What this module relies on inside persist-queue is listed in ``_NEEDED`` and checked when a file
is opened; persist-queue is pinned to the minor version this was tested with (pyproject.toml).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, TypeVar

import persistqueue
from persistqueue.exceptions import Empty
from persistqueue.sqlackqueue import AckStatus, SQLiteAckQueue

from ha_ingestor.backoff import Backoff
from ha_ingestor.errors import DiskFull, QueueError
from ha_ingestor.queue import disk, schema
from ha_ingestor.queue.serializer import _Json, events_or_letter

T = TypeVar("T")

LOCK_TIMEOUT_S = 30.0          # SQLite busy timeout: wait this long for the other process
PAGE_SIZE = schema.PAGE_SIZE
WAL_BYTES = 4 * 2**20          # checkpoint when the write-ahead log holds this much (default)
WAL_MIN, WAL_MAX = 2**19, 16 * 2**20
LOCKED_RETRIES = 5
SHRINK_FREE_BYTES = 4 * 2**20  # a drained file with this much free space gives it back...
SHRINK_LIVE_BYTES = 2**20      # ...when at most this much is live (VACUUM rewrites that much),
SHRINK_EVERY_S = 60.0          # ...at most this often (a busy file has free pages all the time)
WAL_KEY = "queue.wal_bytes"    # the producer's checkpoint interval, for the consumer to follow

READY, IN_FLIGHT = int(AckStatus.ready), int(AckStatus.unack)
_NEEDED = ("_init", "_new_db_connection", "_select", "_mark_ack_status", "resume_unack_tasks",
           "get", "close")


class Taken(NamedTuple):
    """An item as taken: its id, the stored JSON, when it was appended, how many events."""

    item_id: int
    data: bytes
    enqueued_at: float
    events: int


class BatchQueue(SQLiteAckQueue):
    """persist-queue's ack queue with the blob in a side table (see the module docstring)."""

    _TABLE_NAME = "batch"                 # with name="index": batch_index
    _KEY_COLUMN = "_id"
    _SQL_CREATE = schema.INDEX_TABLE
    _SQL_INSERT = ("INSERT INTO {table_name} (timestamp, status, events) VALUES (?, %s, ?)"
                   % AckStatus.ready)
    _SQL_SELECT = ("SELECT {key_column}, timestamp, events FROM {table_name} "
                   "WHERE {key_column} > {rowid} AND status < %s "
                   "ORDER BY {key_column} ASC LIMIT 1" % AckStatus.unack)
    _SQL_SELECT_ID = ("SELECT {key_column}, timestamp, events FROM {table_name} "
                      "WHERE {key_column} = {rowid}")
    _SQL_SELECT_WHERE = ("SELECT {key_column}, timestamp, events FROM {table_name} "
                         "WHERE {key_column} > {rowid} AND status < %s AND {column} {op} ? "
                         "ORDER BY {key_column} ASC LIMIT 1" % AckStatus.unack)

    def __init__(self, path: Path, synchronous: str, auto_resume: bool):
        self._file = path
        self._synchronous = synchronous
        super().__init__(str(path.parent), db_file_name=path.name, name="index",
                         auto_resume=auto_resume, serializer=_Json, multithreading=True,
                         timeout=LOCK_TIMEOUT_S)

    def _new_db_connection(self, path, multithreading, timeout) -> sqlite3.Connection:
        """Every connection: PAGE_SIZE pages (set before the file has its first table), WAL;
        the checkpoint interval follows (``set_wal_bytes``)."""
        conn = sqlite3.connect(str(self._file), timeout=timeout,
                               check_same_thread=not multithreading)
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        conn.execute("PRAGMA temp_store=MEMORY")            # VACUUM's copy: see shrink()
        # Debian builds SQLite with secure_delete on: every page an ack frees is overwritten
        # with zeros, so an ack wrote as much to the WAL as it freed, more than the headroom a
        # full disk keeps. FAST zeroes deleted content only on pages written anyway; what is
        # left in free pages is in a file only its owner can read (0600), and VACUUM drops it.
        conn.execute("PRAGMA secure_delete=FAST")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        return conn

    def set_wal_bytes(self, wal_bytes: int) -> None:
        """A checkpoint once the WAL holds ``wal_bytes`` (in pages of the file's own size).
        After a checkpoint the WAL is rewritten from its start and truncated to twice that: the
        space stays allocated, so the commits of the next interval need no new disk space."""
        with self.tran_lock:
            for conn in {self._getter, self._putter}:
                page = conn.execute("PRAGMA page_size").fetchone()[0]
                conn.execute(f"PRAGMA wal_autocheckpoint={max(1, wal_bytes // page)}")
                conn.execute(f"PRAGMA journal_size_limit={wal_file_bytes(wal_bytes)}")

    def _init(self) -> None:
        super()._init()                   # connections and persist-queue's table
        with self.tran_lock:
            schema.prepare(self._putter, self._file)

    def put(self, item: Any, meta: dict[str, str | None] | None = None) -> int:
        return self.put_serialized(self._serializer.dumps(item), item["n"], meta)

    def put_serialized(self, data: bytes, events: int,
                       meta: dict[str, str | None] | None) -> int:
        """One transaction: the index row, the blob, and ``meta`` upserts (None: delete)."""
        with self.tran_lock, self._putter as conn:
            item_id = conn.execute(self._sql_insert, (time.time(), events)).lastrowid
            conn.execute(schema.DATA_INSERT, (item_id, data))
            if meta:
                conn.executemany(schema.META_UPSERT, [(k, str(v)) for k, v in meta.items()
                                                      if v is not None])
                conn.executemany(schema.META_DELETE, [(k,) for k, v in meta.items()
                                                      if v is None])
        self.total += 1
        return item_id

    def _pop(self, rowid=None, next_in_order=False, raw=False) -> Taken | None:
        """Mark the next ready item in flight (a small-row update) and read its blob. Not kept
        in persist-queue's in-memory cache of taken items: ack and nack work by id."""
        with self.action_lock:
            row = self._select(next_in_order=next_in_order, rowid=rowid)
            if not row or row[0] is None:
                return None
            self._mark_ack_status(row[0], AckStatus.unack)
            data = self._getter.execute(schema.DATA_SELECT, (row[0],)).fetchone()
            if data is None:              # purged between the two statements
                return None
            self.total -= 1
            return Taken(row[0], data[0], row[1], row[2])


def check_persist_queue(queue: BatchQueue | None = None) -> None:
    """QueueError (exit 4) when persist-queue is not what BatchQueue was built on."""
    missing = [name for name in _NEEDED if not callable(getattr(SQLiteAckQueue, name, None))]
    if (AckStatus.ready, AckStatus.unack) != ("1", "2"):
        missing.append("AckStatus ready=1/unack=2")
    if queue is not None:
        missing += [name for name in ("_putter", "_getter")
                    if not isinstance(getattr(queue, name, None), sqlite3.Connection)]
        missing += [name for name in ("tran_lock", "action_lock")
                    if not hasattr(getattr(queue, name, None), "acquire")]
        if getattr(queue, "_table_name", None) != f"`{schema.INDEX}`":
            missing.append(f"the table name {schema.INDEX}")
    if missing:
        raise QueueError(f"persist-queue {persistqueue.__version__} is not the version this "
                         f"release was built for (1.1): it lacks {', '.join(missing)}; install "
                         f"the version pinned in ha-ingestor's requirements")


class SQLiteStore:
    """Every operation on one queue file; SQLite errors come out as DiskFull or QueueError
    naming the file."""

    def __init__(self, path: Path, synchronous: str = "FULL", resume: bool = False,
                 wal_bytes: int | None = None):
        """``wal_bytes``: the checkpoint interval the producer sets (and records in meta);
        None: follow the one recorded (the consumer, the repair commands)."""
        self.path = path
        check_persist_queue()
        disk.private_file(path)
        self._q: BatchQueue = self._run(
            "open the queue", lambda: BatchQueue(path, synchronous, resume))
        check_persist_queue(self._q)
        self._page_size = self._read("PRAGMA page_size")[0][0]
        self._shrunk_at = float("-inf")
        self.wal_bytes = 0
        if wal_bytes is not None and self.get_meta(WAL_KEY) != str(wal_bytes):
            self.set_meta(WAL_KEY, str(wal_bytes))
        self.follow_wal_bytes()

    def follow_wal_bytes(self) -> None:
        """Apply the checkpoint interval recorded in meta (the producer's), if it changed."""
        recorded = self.get_meta(WAL_KEY)
        wal_bytes = int(recorded) if recorded and recorded.isdigit() else WAL_BYTES
        if wal_bytes != self.wal_bytes:
            self._run("set the checkpoint interval", lambda: self._q.set_wal_bytes(wal_bytes))
            self.wal_bytes = wal_bytes

    def wal_size(self) -> int:
        """The write-ahead log on disk. Above its bound (readers kept it from being restarted)
        it is checkpointed and truncated here."""
        size = disk.file_bytes(Path(f"{self.path}-wal"))
        if size <= wal_file_bytes(self.wal_bytes):
            return size
        try:
            self._read("PRAGMA wal_checkpoint(TRUNCATE)", what="checkpoint")
        except DiskFull:
            pass
        return disk.file_bytes(Path(f"{self.path}-wal"))

    # ---- items ---------------------------------------------------------------------------------

    def append(self, data: bytes, events: int, meta: dict[str, str | None] | None) -> int:
        return self._run("append a batch", lambda: self._q.put_serialized(data, events, meta))

    def take_after(self, cursor: int) -> Taken | None:
        """The next ready item after ``cursor`` (from the start when none is), now in flight."""
        def take():
            try:
                return self._q.get(block=False, id=cursor, next_in_order=True, raw=True)
            except Empty:
                return None
        return self._run("take a batch", take)

    def ack(self, item_ids: list[int], dead_rows: list[tuple]) -> None:
        """Delete acknowledged items; store dead letters; one transaction."""
        ids = [(i,) for i in item_ids]
        self._write("acknowledge a batch", lambda c: (
            c.executemany(schema.DEAD_INSERT, dead_rows), c.executemany(schema.ITEM_DELETE, ids)))

    def nack(self, item_ids: list[int]) -> None:
        ids = [(READY, i, IN_FLIGHT) for i in item_ids]
        self._write("return a batch", lambda c: c.executemany(schema.ITEM_STATUS, ids))

    def data_of(self, item_id: int) -> bytes | None:
        rows = self._read(schema.DATA_SELECT, (item_id,), "re-read a batch")
        return rows[0][0] if rows else None

    def dead_letter_item(self, item_id: int, reason: str) -> int | None:
        """Every event of one item (taken or ready) into the dead letters with ``reason``, and
        the item removed, in one transaction (an item that cannot be decoded: its bytes, as one
        dead letter). None when the item is not there."""
        def move(conn: sqlite3.Connection) -> int | None:
            row = conn.execute(schema.DATA_SELECT, (item_id,)).fetchone()
            if row is None:
                return None
            rows = dead_rows(events_or_letter(item_id, row[0], reason))
            conn.executemany(schema.DEAD_INSERT, rows)
            conn.execute(schema.ITEM_DELETE, (item_id,))
            return len(rows)
        return self._write("move an item to the dead letters", move, immediate=True)

    # ---- dead letters, meta, measures ----------------------------------------------------------

    def dead_letter(self, rows: list[tuple]) -> None:
        self._write("store dead letters", lambda c: c.executemany(schema.DEAD_INSERT, rows))

    def get_meta(self, key: str) -> str | None:
        rows = self._read(schema.META_SELECT, (key,), "read meta")
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        self._write("write meta", lambda c: c.execute(schema.META_UPSERT, (key, value)))

    def meta_items(self, prefix: str) -> dict[str, str]:
        """Every meta key/value whose key starts with ``prefix`` (a range scan of the key index:
        keys sort by their UTF-8 bytes, so the keys with the prefix lie between the prefix and
        the prefix with its last character raised by one)."""
        if not prefix:
            raise ValueError("meta_items needs a non-empty prefix")
        above = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        return dict(self._read(schema.META_RANGE, (prefix, above), "read meta"))

    def counts(self) -> tuple[int, int, float | None, int]:
        """(ready events, in-flight events, oldest append time, dead letters)."""
        ready = flying = 0
        oldest = None
        for in_flight, events, first in self._read(schema.COUNTS, (IN_FLIGHT,), "count events"):
            if in_flight:
                flying = events
            else:
                ready = events
            oldest = first if oldest is None else min(oldest, first)
        dead = self._read(schema.DEAD_COUNT, (), "count dead letters")[0][0]
        return ready, flying, oldest, dead

    def page_usage(self) -> tuple[int, int]:
        """(bytes of live pages, bytes of free pages the file reuses before it grows)."""
        pages = self._read("PRAGMA page_count")[0][0]
        free = self._read("PRAGMA freelist_count")[0][0]
        return (pages - free) * self._page_size, free * self._page_size

    def shrink(self) -> bool:
        """Give the free pages of a drained file back to the filesystem. SQLite reuses free pages
        but never returns them by itself: after a backlog a file would keep its largest size,
        and on a full disk that space would be missing to the other queue files. VACUUM rewrites
        the live pages only (at most SHRINK_LIVE_BYTES: a few milliseconds, and that much room
        in the WAL; ``incremental_vacuum`` would write two WAL frames per page it frees).
        True when the file was cut."""
        live, free = self.page_usage()
        try:
            if free >= SHRINK_FREE_BYTES and live <= SHRINK_LIVE_BYTES and \
                    time.monotonic() - self._shrunk_at >= SHRINK_EVERY_S:
                self._shrunk_at = time.monotonic()
                self._run("give free pages back", self._vacuum)
                live, free = self.page_usage()
            if disk.file_bytes(self.path) > live + free + SHRINK_FREE_BYTES:
                # the file is cut to its new size when the WAL is checkpointed: do it now
                # rather than when the next commits happen to fill the WAL
                self._read("PRAGMA wal_checkpoint(PASSIVE)", what="checkpoint")
                return True
        except DiskFull:
            pass
        return False

    def _vacuum(self) -> None:
        with self._q.tran_lock:
            self._q._putter.execute("VACUUM")     # never inside a transaction: none is open

    def peek(self, limit: int) -> list[dict]:
        events: list[dict] = []
        for item_id, data in self._read(schema.PEEK, (), "peek"):
            events.extend(event for event, _reason in
                          events_or_letter(item_id, data, "")[: limit - len(events)])
            if len(events) >= limit:
                break
        return events

    def dead_letters(self, limit: int | None) -> list[tuple[int, str, float, str]]:
        return self._read(schema.DEAD_LIST, (limit or -1,), "list dead letters")

    def requeue_dead(self, ids: Iterable[int] | None, batch_events: int) -> int:
        """Dead letters back into the queue as new items and out of the dead-letter store, in
        one transaction (a crash leaves either both or neither)."""
        wanted = None if ids is None else set(ids)

        def requeue(conn: sqlite3.Connection) -> int:
            letters = [(i, e) for i, _r, _a, e in conn.execute(schema.DEAD_LIST, (-1,))
                       if wanted is None or i in wanted]
            for start in range(0, len(letters), batch_events):
                chunk = [_Json.loads(e.encode("utf-8")) for _i, e in
                         letters[start:start + batch_events]]
                data = _Json.dumps({"n": len(chunk), "events": chunk})
                item_id = conn.execute(self._q._sql_insert, (time.time(), len(chunk))).lastrowid
                conn.execute(schema.DATA_INSERT, (item_id, data))
            conn.executemany(schema.DEAD_DELETE, [(i,) for i, _e in letters])
            return len(letters)
        return self._write("requeue dead letters", requeue, immediate=True)

    def purge(self, dead: bool) -> tuple[int, int]:
        """Delete every queued item (and with ``dead`` every dead letter); (events, dead)."""
        def delete(conn: sqlite3.Connection) -> tuple[int, int]:
            events = conn.execute(schema.EVENT_TOTAL).fetchone()[0]
            conn.execute(schema.ITEMS_DELETE_ALL)
            letters = conn.execute(schema.DEAD_DELETE_ALL).rowcount if dead else 0
            return events, letters
        return self._write("purge", delete, immediate=True)

    def close(self) -> None:
        self._q.close()

    # ---- the boundary: SQLite's errors become ours ---------------------------------------------

    def _read(self, sql: str, params: tuple = (), what: str = "read the queue") -> list[tuple]:
        return self._run(what, lambda: self._q._getter.execute(sql, params).fetchall())

    def _write(self, what: str, action: Callable[[sqlite3.Connection], T],
               immediate: bool = False) -> T:
        def transaction() -> T:
            with self._q.tran_lock, self._q._putter as conn:
                if immediate:             # it reads before it writes: take the lock first
                    conn.execute("BEGIN IMMEDIATE")
                return action(conn)
        return self._run(what, transaction)

    def _run(self, what: str, action: Callable[[], T]) -> T:
        """Run ``action``. SQLite's busy timeout waits for the other process; on top of it a few
        retries with the shared backoff absorb "database is locked" under heavy contention."""
        backoff = Backoff(base=0.05, factor=2.0, cap=1.0)
        while True:
            try:
                return action()
            except sqlite3.Error as exc:
                error = classify(exc, self.path, what)
            if error is not None or backoff.attempts >= LOCKED_RETRIES:
                raise error or QueueError(f"{self.path}: still locked by another process "
                                          f"after retries; cannot {what}")
            time.sleep(backoff.next_delay())


def wal_bytes_for(max_bytes: int | None) -> int:
    """The checkpoint interval for a file of ``max_bytes``: 1/64 of it, within 512 KiB and
    16 MiB (small enough to leave a small queue most of its room, large enough that checkpoints,
    which fsync, stay rare next to the commits)."""
    if max_bytes is None:
        return WAL_BYTES
    return min(WAL_MAX, max(WAL_MIN, max_bytes // 64))


def wal_file_bytes(wal_bytes: int) -> int:
    """How large the write-ahead log file stays between checkpoints (``journal_size_limit``)."""
    return 2 * wal_bytes


def classify(exc: sqlite3.Error, path: Path, what: str) -> Exception | None:
    """DiskFull, QueueError, or None for a lock held by the other process (retry)."""
    text = str(exc)
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code == sqlite3.SQLITE_FULL or "disk is full" in text:
        return DiskFull(f"{path}: disk full while trying to {what}")
    if code == sqlite3.SQLITE_IOERR and disk.free_bytes(path.parent) < 2 * PAGE_SIZE:
        return DiskFull(f"{path}: disk full while trying to {what} ({text})")
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in text:
        return None
    if isinstance(exc, sqlite3.OperationalError):
        return QueueError(f"{path}: cannot {what}: {text}")
    return QueueError(f"{path}: not a readable queue file: {text}")


def dead_rows(entries: Iterable[tuple[dict, str]]) -> list[tuple[str, str, float]]:
    now = time.time()
    return [(_Json.dumps(event).decode("utf-8"), str(reason), now) for event, reason in entries]

