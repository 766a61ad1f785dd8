"""The layout of a queue file and its version: the SQL of the storage, in one place.

Format 2 (this release): ``batch_index`` (small rows that taking and acknowledging touch),
``batch_data`` (the JSON batches), ``dead_letters``, ``meta``; ``meta["queue.format"] = "2"``.

Format 1 (the first release): one persist-queue table ``ack_queue_default`` (``_id, data,
timestamp, status``) beside ``dead_letters`` and ``meta``, no version key. Opening such a file
migrates it in one transaction without copying a blob: the acknowledged rows are deleted, an
index row is written per remaining item (its event count read from the first bytes of the
batch, ``{"n": 1000, ...``) and the table is renamed ``batch_data``; its two old columns
(``timestamp``, ``status``) stay, unused. A crash during the migration leaves format 1.
"""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

from ha_ingestor.errors import QueueError

FORMAT = 2
FORMAT_KEY = "queue.format"
PAGE_SIZE = 16384                # a 300 kB batch spans 19 pages (81 at 4 KiB: appends 2x slower)

_V1_TABLE = "ack_queue_default"
_V1_ACKED = 5
_V1_IN_FLIGHT = 2
_READY, _IN_FLIGHT = 1, 2            # persist-queue's AckStatus.ready / unack
_COUNT_PREFIX = re.compile(rb'\{"n":(\d+)')

# persist-queue fills in {table_name} (batch_index) and {key_column} (_id)
INDEX_TABLE = ("CREATE TABLE IF NOT EXISTS {table_name} ("
               "{key_column} INTEGER PRIMARY KEY AUTOINCREMENT, timestamp FLOAT NOT NULL, "
               "status INTEGER NOT NULL, events INTEGER NOT NULL)")
INDEX = "batch_index"
_TABLES = (
    "CREATE TABLE IF NOT EXISTS batch_data (_id INTEGER PRIMARY KEY, data BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS dead_letters (id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " event TEXT NOT NULL, reason TEXT NOT NULL, at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TRIGGER IF NOT EXISTS batch_data_follows AFTER DELETE ON batch_index "
    "BEGIN DELETE FROM batch_data WHERE _id = old._id; END",
)

DATA_INSERT = "INSERT INTO batch_data (_id, data) VALUES (?, ?)"
DATA_SELECT = "SELECT data FROM batch_data WHERE _id = ?"
ITEM_DELETE = "DELETE FROM batch_index WHERE _id = ?"
ITEM_STATUS = "UPDATE batch_index SET status = ? WHERE _id = ? AND status = ?"
ITEMS_DELETE_ALL = "DELETE FROM batch_index"
EVENT_TOTAL = "SELECT COALESCE(SUM(events), 0) FROM batch_index"
COUNTS = ("SELECT status = ? AS in_flight, SUM(events), MIN(timestamp) FROM batch_index "
          "GROUP BY in_flight")
PEEK = "SELECT i._id, d.data FROM batch_index i JOIN batch_data d ON d._id = i._id ORDER BY i._id"
DEAD_INSERT = "INSERT INTO dead_letters (event, reason, at) VALUES (?, ?, ?)"
DEAD_COUNT = "SELECT count(*) FROM dead_letters"
DEAD_LIST = "SELECT id, reason, at, event FROM dead_letters ORDER BY id LIMIT ?"
DEAD_DELETE = "DELETE FROM dead_letters WHERE id = ?"
DEAD_DELETE_ALL = "DELETE FROM dead_letters"
META_SELECT = "SELECT value FROM meta WHERE key = ?"
META_RANGE = "SELECT key, value FROM meta WHERE key >= ? AND key < ?"
META_DELETE = "DELETE FROM meta WHERE key = ?"
META_UPSERT = ("INSERT INTO meta (key, value) VALUES (?, ?) "
               "ON CONFLICT(key) DO UPDATE SET value = excluded.value")


def prepare(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the file to format 2 in one transaction: migrate format 1, create what is missing.
    A file already at format 2 is only read (``queue status`` takes no write lock)."""
    if file_format(conn) == FORMAT:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = file_format(conn)
        if version > FORMAT:
            raise QueueError(f"{path}: queue file format {version} was written by a newer "
                             f"release of ha-ingestor (this one reads format {FORMAT}); "
                             f"upgrade, or move the file aside")
        if version == 1:
            _migrate_v1(conn)
        for ddl in _TABLES:
            conn.execute(ddl)
        if version != FORMAT:
            conn.execute(META_UPSERT, (FORMAT_KEY, str(FORMAT)))
        conn.commit()
    except BaseException:
        conn.rollback()
        raise


def file_format(conn: sqlite3.Connection) -> int:
    """2 (or later) from meta; 1 for a first-release file; 0 for a new one."""
    if _has_table(conn, "meta"):
        row = conn.execute(META_SELECT, (FORMAT_KEY,)).fetchone()
        if row:
            try:
                return int(row[0])
            except ValueError:
                raise QueueError(f"unreadable {FORMAT_KEY} {row[0]!r} in the queue file") from None
    return 1 if _has_table(conn, _V1_TABLE) else 0


def event_count(prefix: bytes | str) -> int:
    """The ``n`` of a stored batch, from its first bytes."""
    if isinstance(prefix, str):
        prefix = prefix.encode("utf-8")
    match = _COUNT_PREFIX.match(prefix)
    return int(match.group(1)) if match else 1


def _migrate_v1(conn: sqlite3.Connection) -> None:
    conn.execute(f"DELETE FROM {_V1_TABLE} WHERE status >= ?", (_V1_ACKED,))
    rows = conn.execute(f"SELECT _id, timestamp, status, substr(data, 1, 24) FROM {_V1_TABLE}")
    conn.executemany(f"INSERT INTO {INDEX} (_id, timestamp, status, events) VALUES (?, ?, ?, ?)",
                     [(item_id, stamp if stamp is not None else time.time(),
                       _IN_FLIGHT if int(status) == _V1_IN_FLIGHT else _READY,
                       event_count(prefix)) for item_id, stamp, status, prefix in rows])
    last = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (_V1_TABLE,)).fetchone()
    conn.execute(f"ALTER TABLE {_V1_TABLE} RENAME TO batch_data")
    if last:                           # new items get ids above every id format 1 handed out
        conn.execute("DELETE FROM sqlite_sequence WHERE name IN (?, ?)", (INDEX, _V1_TABLE))
        conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (INDEX, last[0]))


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                        (name,)).fetchone() is not None
