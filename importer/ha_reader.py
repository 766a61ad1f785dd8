"""Requests to Home Assistant for an import: the HA collector's connection (``HAConnection``:
URL, token, TLS, the same error classes), opened once and reopened after a network error.

A refused token is ``AuthError`` (exit 3) at once. A network error or a request HA did not answer
in time reconnects with the shared backoff and asks again, up to ``ATTEMPTS`` times, then gives
up with the last error (the import is resumable: run it again). HA answering a request with an
error is ``RequestRefused`` naming the command and HA's reason.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from ha_ingestor.backoff import Backoff
from ha_ingestor.config import HomeAssistantConfig
from ha_ingestor.errors import IngestorError, TransientError
from ha_ingestor.lifecycle import StopFlag

from collectors.homeassistant.connection import CommandError, HAConnection

log = logging.getLogger("import")

ATTEMPTS = 8


class RequestRefused(IngestorError):
    """HA answered a request with ``success: false`` (exit 1)."""


class Stopped(IngestorError):
    """A stop was requested while waiting for HA."""


def _ignore_events(_events: list[dict], _rx_ns: int) -> None:
    """An import subscribes to nothing; HA sends it no events."""


class HAReader:
    def __init__(self, config: HomeAssistantConfig, timeout: float, stop: StopFlag):
        self.config = config
        self.timeout = timeout
        self.stop = stop
        self.backoff = Backoff(base=1.0, factor=2.0, cap=30.0, jitter=0.2)
        self.connection: HAConnection | None = None
        self.ha_version: str | None = None

    def __enter__(self) -> "HAReader":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def _connect(self) -> HAConnection:
        if self.connection is None or not self.connection.alive():
            self.close()
            connection = HAConnection(self.config, _ignore_events)
            connection.connect()
            self.ha_version = connection.authenticate()
            connection.start_reader()
            self.connection = connection
            log.info("connected to Home Assistant %s at %s", self.ha_version, self.config.url)
        return self.connection

    def request(self, message: dict) -> Any:
        """HA's result for ``message``. Raises AuthError, RequestRefused, Stopped, or the last
        TransientError after ATTEMPTS tries."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                result = self._connect().request(message, self.timeout)
                self.backoff.reset()
                return result
            except CommandError as exc:
                raise RequestRefused(_refused_text(exc)) from None
            except TransientError as exc:
                self.close()
                if attempt == ATTEMPTS:
                    raise
                delay = self.backoff.next_delay()
                log.warning("Home Assistant: %s; asking again in %.1f s (%d/%d)", exc, delay,
                            attempt, ATTEMPTS)
                if self.stop.wait(delay):
                    raise Stopped("stopped while waiting for Home Assistant") from None
        raise AssertionError("unreachable")

    def submit(self, message: dict) -> "Pending":
        """Send ``message`` now and return at once; ``Pending.result()`` waits for the answer.
        So the next window can be on its way while the last one is stored."""
        try:
            future = self._connect().send(message)[1]
        except TransientError:
            future = None                     # result() asks again, with the backoff
        return Pending(self, message, future)

    def entity_ids(self) -> list[str]:
        """Every entity HA knows now: its states, and its entity registry (entities without a
        state right now, e.g. disabled ones, may still have history)."""
        ids = {state["entity_id"] for state in self.request({"type": "get_states"}) or []
               if isinstance(state, dict) and isinstance(state.get("entity_id"), str)}
        try:
            registry = self.request({"type": "config/entity_registry/list"}) or []
        except RequestRefused as exc:          # not an administrator: the states are enough
            log.info("entity registry not readable (%s); using the current states", exc)
            registry = []
        ids.update(entry["entity_id"] for entry in registry
                   if isinstance(entry, dict) and isinstance(entry.get("entity_id"), str))
        return sorted(ids)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close("import finished")
            self.connection = None


class Pending:
    """A request sent ahead of time."""

    def __init__(self, reader: HAReader, message: dict, future: Future | None):
        self.reader, self.message, self.future = reader, message, future

    def result(self) -> Any:
        """HA's answer; a first try that failed is asked again as ``HAReader.request`` does."""
        if self.future is not None:
            try:
                return self.future.result(self.reader.timeout)
            except CommandError as exc:
                raise RequestRefused(_refused_text(exc)) from None
            except (TransientError, FutureTimeout) as exc:
                log.warning("Home Assistant: %s; asking again",
                            exc or f"no answer to {self.message.get('type')}")
                self.reader.close()
            finally:
                self.future = None
        return self.reader.request(self.message)


def _refused_text(exc: CommandError) -> str:
    if exc.code == "unknown_command":
        return (f"Home Assistant does not know {exc.command} (is the history/recorder "
                f"integration loaded? docs/import.md)")
    return f"Home Assistant refused {exc.command}: {exc.code}: {exc.message}"
