"""Error classes and the documented process exit codes.

Loops catch only the classes defined here; library exceptions are turned into one of them at the
boundary where they happen (the MQTT client, the WebSocket, the InfluxDB HTTP call, the queue file).
"""

from __future__ import annotations

# Exit codes. Container restart policies and the supervisor rely on these values.
EXIT_OK = 0            # clean stop (signal or end of work)
EXIT_FAILURE = 1       # unexpected error: a bug or an unclassified failure; restart is reasonable
EXIT_CONFIG = 2        # bad configuration or command-line usage: restarting will not help
EXIT_AUTH = 3          # the source or sink refused our credentials: restarting will not help
EXIT_QUEUE = 4         # a queue file is unusable (corrupt, not SQLite, no permission) or in use
EXIT_MISSING = 5       # `verify`: points HA's recorder holds are missing from InfluxDB
EXIT_KILLED = 130      # second signal: stopped at once without draining

EXIT_CODES = {
    EXIT_OK: "clean stop",
    EXIT_FAILURE: "unexpected error (see the log); safe to restart",
    EXIT_CONFIG: "bad configuration or usage; fix the config before restarting",
    EXIT_AUTH: "authentication refused by the MQTT broker, Home Assistant or NATS (a `nats` command); the writers retry InfluxDB and NATS credentials instead, without losing anything",
    EXIT_QUEUE: "a queue file cannot be opened (corrupt, no permission) or another process "
                "already has its role (a second writer or collector)",
    EXIT_MISSING: "verify: state changes HA's recorder holds are missing from InfluxDB",
    EXIT_KILLED: "stopped at once by a second signal",
}


class IngestorError(Exception):
    """Base class of every error this project raises on purpose."""

    exit_code = EXIT_FAILURE


class ConfigError(IngestorError):
    """Invalid configuration. The message names the dotted key and the bad value."""

    exit_code = EXIT_CONFIG


class AuthError(IngestorError):
    """A source or sink refused our credentials; retrying quickly will not help."""

    exit_code = EXIT_AUTH


class ConverterStopped(IngestorError):
    """The writer's converter process stopped (a crash, a kill). The writer exits 1 and is
    restarted; what it had taken is taken again (and an item it keeps dying on, moved aside)."""


class QueueError(IngestorError):
    """The queue file is unusable (corrupt, not SQLite, unwritable). The message names the file."""

    exit_code = EXIT_QUEUE


class NoSuchItem(QueueError):
    """A repair command named a queue item that is not waiting in the queue (a usage error)."""

    exit_code = EXIT_CONFIG


class QueueFull(IngestorError):
    """Appending would take the queue past ``queue.max_bytes``; nothing was written."""


class DiskFull(QueueFull):
    """The filesystem holding the queue has no room for this operation; nothing was written.
    Never a reason to exit: wait (with backoff) for the writer or the operator to free space."""


class Stopping(Exception):
    """A stop was requested while work could not be finished (InfluxDB or the disk refusing it);
    the work stays in the queue and is done again after a restart."""


class TransientError(IngestorError):
    """Worth retrying later with backoff: network errors, timeouts, 5xx, 429."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(IngestorError):
    """Retrying the same input will fail the same way (400, 422, malformed data)."""


class ConversionError(PermanentError, ValueError):
    """One event cannot become a point; the message says why. ``kind`` is a short label for the
    dead-letter metric (``malformed``, ``name``, ``limit``, ``text``, ``binary``, ...)."""

    def __init__(self, message: str, kind: str = "malformed"):
        super().__init__(message)
        self.kind = kind


class UnreadableItem(PermanentError):
    """The stored bytes of one queue item cannot be decoded (a damaged file): that item's
    problem only. The writer keeps its bytes as a dead letter with this reason and goes on."""
