"""One owner per role per queue file, enforced by the operating system.

Each queue file has exactly one producer process (a collector) and one consumer process (the
writer). A second writer would hand the first one's in-flight items back and both would write
them; a second MQTT collector would keep taking the first one's broker session. So each role
holds an exclusive ``flock`` on a lock file of its own beside the queue file
(``mqtt.db-producer.lock``, ``mqtt.db-consumer.lock``) for as long as it has the file open. The
kernel releases the lock when the process ends, however it ends (SIGKILL included), so there is
never a stale lock to clean up. The holder writes its pid and what it is into the lock file, so
that a second process can say who is in the way.

Within one process a role may be opened more than once (a test, a repair command run from a
process that also reads): the lock is counted, and released with the last holder.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

from ha_ingestor.errors import QueueError
from ha_ingestor.queue import disk

PRODUCER = "producer"
CONSUMER = "consumer"
ROLES = (PRODUCER, CONSUMER)

_held: dict[tuple[str, str], "RoleLock"] = {}
_held_guard = threading.Lock()


class RoleLock:
    """The OS lock of one role on one queue file, held until ``release()``."""

    def __init__(self, db_path: Path, role: str, fd: int):
        self.db_path = db_path
        self.role = role
        self._fd = fd
        self._count = 1

    def release(self) -> None:
        with _held_guard:
            self._count -= 1
            if self._count or self._fd < 0:
                return
            _held.pop(_key(self.db_path, self.role), None)
            os.close(self._fd)           # closing the descriptor releases the flock
            self._fd = -1


def lock_path(db_path: Path, role: str) -> Path:
    return Path(f"{db_path}-{role}.lock")


def acquire(db_path: Path, role: str, owner: str) -> RoleLock:
    """Take ``role`` on the queue file ``db_path`` for this process, or raise QueueError (exit 4)
    naming the process that holds it: ``queue/mqtt.db is already used by the writer (pid 1234)``.
    """
    if role not in ROLES:
        raise ValueError(f"unknown queue role {role!r}")
    with _held_guard:
        held = _held.get(_key(db_path, role))
        if held is not None:
            held._count += 1
            return held
        fd = _open_lock_file(lock_path(db_path, role))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise QueueError(f"{db_path} is already used by {holder}") from None
        except OSError as exc:
            os.close(fd)
            raise QueueError(f"{db_path}: cannot lock it for the {role}: {exc.strerror}") from exc
        _write_holder(fd, owner)
        lock = _held[_key(db_path, role)] = RoleLock(db_path, role, fd)
        return lock


def _key(db_path: Path, role: str) -> tuple[str, str]:
    return os.path.realpath(db_path), role


def _open_lock_file(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, disk.FILE_MODE)
    except OSError as exc:
        raise disk._classify(exc, f"{path}: cannot create the lock file") from exc
    if os.fstat(fd).st_mode & 0o077:
        os.fchmod(fd, disk.FILE_MODE)
    return fd


def _write_holder(fd: int, owner: str) -> None:
    """``<pid> <what>``; best effort (a full disk must not stop the owner from running)."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {owner}\n".encode(), 0)
    except OSError:
        pass


def _read_holder(fd: int) -> str:
    text = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
    pid, _, owner = text.partition(" ")
    if not pid.isdigit():
        return "another process (pid unknown)"
    return f"{owner or 'another process'} (pid {pid})"
