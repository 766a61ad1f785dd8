"""What every sink shares: the three outcomes of a write and the HTTP status → error mapping.

A sink has one method, ``write(lines)`` (each line UTF-8 encoded, without its newline), that
returns when InfluxDB accepted every line and otherwise raises:

- ``TransientError`` (network error, timeout, 5xx, 429 with ``Retry-After``): keep the batch,
  retry later;
- ``PermanentError`` (400, 422): InfluxDB rejects something in the batch; the message is its
  reason. The loop bisects to find the rejected lines;
- ``TooLarge`` (413): split the batch and try again;
- ``AccessDenied`` (401, 403, 404): wrong credentials or token, no permission, missing database or
  bucket. Retried slowly and logged loudly; never a reason to drop anything.
"""

from __future__ import annotations

import json
import ssl
from typing import Protocol

from ha_ingestor.config.model import InfluxConfig
from ha_ingestor.errors import IngestorError, PermanentError, TransientError
from ha_ingestor.tlsutil import client_context


class TooLarge(PermanentError):
    """413: the request body exceeds InfluxDB's ``max-body-size``."""


class AccessDenied(IngestorError):
    """401/403/404: retrying will not help until someone fixes the credentials or creates the
    database; the message names the cause."""


class Sink(Protocol):
    def write(self, lines: list[bytes]) -> None: ...
    """A sink with ``wants_origins = True`` is called ``write(lines, origins)`` with the
    (queue item, position) of every line (the NATS sink names its messages with them)."""

    def ping(self) -> bool: ...

    def close(self) -> None: ...


def error_for_status(status: int, reason: str, retry_after: str | None, target: str
                     ) -> IngestorError:
    """The error class for a failed write's HTTP status; ``reason`` is InfluxDB's own text."""
    if status in (400, 422):
        return PermanentError(f"InfluxDB rejected the points ({status}): {reason}")
    if status == 413:
        return TooLarge(f"request too large for InfluxDB (413): {reason}")
    if status == 401:
        return AccessDenied(f"InfluxDB refused the credentials for {target} (401: {reason}); "
                            "check influxdb.username/password or influxdb.token")
    if status == 403:
        return AccessDenied(f"InfluxDB denied writing to {target} (403: {reason}); the user or "
                            "token lacks write permission")
    if status == 404:
        return AccessDenied(f"InfluxDB has no {target} (404: {reason}); create it or fix "
                            "influxdb.database/bucket")
    return TransientError(f"InfluxDB answered {status}: {reason}",
                          retry_after=parse_retry_after(retry_after))


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (the HTTP-date form is rare for InfluxDB; treated as absent)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def reason_text(body: bytes | str | None, fallback: str) -> str:
    """InfluxDB's error text: ``{"error": ...}`` (1.x) or ``{"message": ...}`` (2.x)."""
    if not body:
        return fallback
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:500] or fallback
    if isinstance(data, dict):
        return str(data.get("error") or data.get("message") or text)[:500]
    return text[:500]


def ssl_context(config: InfluxConfig) -> ssl.SSLContext | None:
    """For https URLs: the CA file and verification options of ``influxdb.tls``."""
    if not config.url.lower().startswith("https"):
        return None
    return client_context(config.tls)


def open_sink(config: InfluxConfig) -> Sink:
    if config.api == "v2":
        from writer.sink_v2 import SinkV2
        return SinkV2(config)
    from writer.sink_v1 import SinkV1
    return SinkV1(config)
