"""Where the queue lives on disk: a private directory, private files, and how much room is left.

Every event and dead letter in a queue file is readable by whoever can read the file (HA
attributes, MQTT payloads), so the directory is 0700 and every file 0600 whatever the umask.
SQLite creates ``-wal`` and ``-shm`` with the mode of the database file, so creating that file
0600 before SQLite opens it is enough for them.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path

from ha_ingestor.errors import DiskFull, QueueError

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600
COMPANIONS = ("-wal", "-shm")            # SQLite's files beside a database in WAL mode


def private_dir(path: Path) -> None:
    """Create the queue directory 0700, or tighten an existing one that others can enter (made
    by an earlier release under umask 022). A shared directory (sticky bit, e.g. /tmp) or one
    owned by another user is left alone, with a warning."""
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        mode = path.stat()
    except OSError as exc:
        raise _classify(exc, f"{path}: cannot create the queue directory") from exc
    if not mode.st_mode & 0o077:
        return
    if mode.st_uid != os.geteuid() or mode.st_mode & stat.S_ISVTX:
        log.warning("queue directory %s is readable by other users (mode %o) and not ours to "
                    "change; keep queue.dir in a directory of its own", path, mode.st_mode & 0o777)
        return
    _chmod(path, DIR_MODE)


def private_file(path: Path) -> None:
    """Create ``path`` empty and 0600 if it does not exist; make an existing one (and its
    ``-wal``/``-shm``) 0600. Never opens an existing database file: closing a descriptor of it
    would drop the SQLite locks this process holds on it."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE))
        return
    except FileExistsError:
        pass
    except OSError as exc:
        raise _classify(exc, f"{path}: cannot create the queue file") from exc
    for name in (path, *(Path(f"{path}{suffix}") for suffix in COMPANIONS)):
        try:
            if name.stat().st_mode & 0o077:
                _chmod(name, FILE_MODE)
        except FileNotFoundError:
            pass


def bytes_on_disk(path: Path) -> int:
    """The database file and its companions, as ``ls`` would add them up."""
    total = 0
    for name in (str(path), *(f"{path}{suffix}" for suffix in COMPANIONS)):
        try:
            total += os.stat(name).st_size
        except FileNotFoundError:
            pass
    return total


def file_bytes(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def free_bytes(directory: Path) -> int:
    """What an unprivileged process may still allocate on the filesystem of ``directory``."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def _chmod(path: Path, mode: int) -> None:
    try:
        os.chmod(path, mode)
    except OSError as exc:
        log.warning("cannot make %s private (mode %o): %s", path, mode, exc)


def _classify(exc: OSError, what: str) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"{what}: the filesystem is full")
    return QueueError(f"{what}: {exc.strerror or exc}")
