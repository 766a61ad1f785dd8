"""``config check --connect`` for Home Assistant: the collector's own connection authenticates
with the configured token, then subscribes to the configured event types (all of them when none
are listed: only an administrator's token may) and unsubscribes again."""

from __future__ import annotations

from concurrent.futures import TimeoutError as FutureTimeout

from ha_ingestor.errors import TransientError

from collectors.homeassistant.collector import HACollector
from collectors.homeassistant.connection import CommandError, HAConnection


def check_connection(config) -> str:
    """What HA accepted; raises AuthError (token refused, not an administrator's) or
    TransientError (not reachable)."""
    ha = config.homeassistant
    connection = HAConnection(ha, on_events=lambda _events, _rx: None)
    try:
        connection.connect()
        version = connection.authenticate()
        connection.start_reader()
        types = list(ha.event_types) or [None]
        for event_type in types:
            _subscribe_and_leave(connection, event_type, ha.connect_timeout)
    finally:
        connection.close("check done")
    what = f"{len(types)} event type(s)" if types != [None] else "all event types"
    return f"Home Assistant {version} at {ha.url} accepted the token and the subscription to {what}"


def _subscribe_and_leave(connection: HAConnection, event_type: str | None,
                         timeout: float) -> None:
    message = {"type": "subscribe_events", **({"event_type": event_type} if event_type else {})}
    msg_id, future = connection.send(message)
    try:
        future.result(timeout)
    except CommandError as exc:
        raise HACollector._subscribe_error(event_type, exc) from None
    except FutureTimeout:
        raise TransientError(f"no answer to subscribe_events within {timeout:.0f} s") from None
    connection.request({"type": "unsubscribe_events", "subscription": msg_id}, timeout)
