"""Writing a batch of lines to a sink until it is accepted or rejected, the one way every writer
does it (the queue writer and the central writers of a fleet).

- accepted: return;
- some lines rejected for good (400/422, a point JetStream refuses): bisect down to them and
  return them with the reason, having written the rest; 413: split;
- not written (network, 5xx, 429, refused credentials, a missing database): keep the lines and
  retry for ever with the shared backoff (honouring ``Retry-After``); nothing is dropped. A stop
  request while waiting raises ``Stopping``: the caller keeps its input unacknowledged;
- an unexpected error from the sink is treated as a rejection, so bisecting finds the line that
  caused it and the rest is written.

Lines are UTF-8 encoded, one point each, without the newline.
"""

from __future__ import annotations

import logging
import time

from ha_ingestor import metrics
from ha_ingestor.backoff import Backoff
from ha_ingestor.errors import PermanentError, Stopping, TransientError
from ha_ingestor.lifecycle import StopFlag
from writer.sinks import AccessDenied, Sink, TooLarge

log = logging.getLogger("writer")

ACCESS_BACKOFF = dict(base=5.0, factor=2.0, cap=60.0, jitter=0.2)
PING_EVERY_S = 5.0

Origins = list[tuple[str, int]] | None


class Delivery:
    """Delivers lines to ``sink``; ``up`` says whether the sink took the last write."""

    def __init__(self, sink: Sink, stop: StopFlag, batch_size: int, target: str = "InfluxDB"):
        self.sink = sink
        self.stop = stop
        self.batch_size = batch_size
        self.target = target
        self.url = getattr(sink, "url", None) or getattr(getattr(sink, "config", None), "url", "?")
        self.backoff = Backoff(base=0.5, factor=2.0, cap=10.0)   # an outage ends: resume soon
        self.access_backoff = Backoff(**ACCESS_BACKOFF)
        self.up = False
        self._failing_since: float | None = None
        self._pinged_at = time.monotonic()

    def check(self) -> None:
        self.mark_up(self.sink.ping(), from_ping=True)

    def deliver_all(self, lines: list[bytes], origins: Origins = None) -> list[tuple[int, str]]:
        """Write in requests of at most batch_size lines; returns (index, reason) of the lines
        rejected for good."""
        rejected: list[tuple[int, str]] = []
        for start in range(0, len(lines), self.batch_size):
            end = start + self.batch_size
            rejected += self._deliver(lines[start:end],
                                      origins[start:end] if origins else None, start)
        return rejected

    def _deliver(self, lines: list[bytes], origins: Origins, offset: int
                 ) -> list[tuple[int, str]]:
        try:
            self._write_retrying(lines, origins)
            return []
        except TooLarge:
            if len(lines) == 1:
                return [(offset, f"line larger than {self.target}'s max-body-size")]
        except PermanentError as exc:
            if len(lines) == 1:
                return [(offset, str(exc))]
        half = len(lines) // 2
        return (self._deliver(lines[:half], origins[:half] if origins else None, offset)
                + self._deliver(lines[half:], origins[half:] if origins else None,
                                offset + half))

    def _write_retrying(self, lines: list[bytes], origins: Origins) -> None:
        """Write until the sink accepts or rejects the lines; raises Stopping on a stop."""
        while True:
            started = time.monotonic()
            try:
                if origins is None:
                    self.sink.write(lines)
                else:
                    self.sink.write(lines, origins)
            except (TransientError, AccessDenied) as exc:
                self._wait_after(exc)
                continue
            except PermanentError:
                self.mark_up(True)   # the sink answered: it is up
                raise
            except Exception as exc:  # noqa: BLE001 - isolated by bisecting, never a crash
                if len(lines) == 1:
                    log.exception("unexpected error writing one line; it is a dead letter")
                raise PermanentError(f"error while writing: {type(exc).__name__}: {exc}"
                                     ) from None
            metrics.WRITE_LATENCY.observe(time.monotonic() - started)
            self.mark_up(True)
            return

    def _wait_after(self, exc: Exception) -> None:
        self.mark_up(False)
        if isinstance(exc, AccessDenied):
            metrics.WRITE_RETRIES.labels(reason="access").inc()
            delay = self.access_backoff.next_delay()
            log.error("%s; nothing is dropped, retrying in %.0f s", exc, delay)
        else:
            metrics.WRITE_RETRIES.labels(reason="transient").inc()
            delay = self.backoff.next_delay(at_least=getattr(exc, "retry_after", None))
            if self.backoff.attempts == 1 or self.backoff.attempts % 10 == 0:
                log.warning("%s write failed (%s); keeping the batch, retry %d in %.1f s",
                            self.target, exc, self.backoff.attempts, delay)
        if self.stop.wait(delay):
            raise Stopping()

    def ping_when_idle(self) -> None:
        """With nothing to write, readiness and the up gauge follow the sink's ping (only
        then: the sink's connection belongs to the write thread while a write is in flight)."""
        now = time.monotonic()
        if now - self._pinged_at < PING_EVERY_S:
            return
        self._pinged_at = now
        self.mark_up(self.sink.ping(), from_ping=True)

    def mark_up(self, up: bool, from_ping: bool = False) -> None:
        if from_ping and up != self.up:
            log.log(logging.INFO if up else logging.WARNING, "%s at %s %s", self.target,
                    self.url, "answers again" if up else "does not answer")
        elif up and not self.up and self._failing_since is not None:
            log.info("%s accepts writes again after %.0f s", self.target,
                     time.monotonic() - self._failing_since)
        if up:
            self.backoff.reset()
            self.access_backoff.reset()
            self._failing_since = None
        elif self._failing_since is None:
            self._failing_since = time.monotonic()
        self.up = up
        metrics.INFLUX_UP.set(1 if up else 0)
        metrics.CONNECTED.labels(component="writer").set(1 if up else 0)
