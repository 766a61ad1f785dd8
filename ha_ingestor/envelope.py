"""The event envelope: the raw source event as the collectors received it, plus where it came from
and when.

Envelopes are plain dicts so that the queue stores them as JSON without a conversion step:

MQTT::

    {"src": "mqtt", "rx": <receive time, ns>, "topic": "zigbee2mqtt/kitchen",
     "qos": 1, "retain": false, "p": "<payload>", "pe": "utf8" | "b64"}

Payload bytes that are valid UTF-8 are stored as text (``pe: utf8``); anything else as base64
(``pe: b64``), so every payload round-trips exactly.

Home Assistant::

    {"src": "ha", "rx": <receive time, ns>, "kind": "live" | "backfill" | "resync",
     "event": {<the HA event JSON: event_type, data, origin, time_fired, context>}}

``backfill`` (a state change read back from HA's recorder after a reconnect) and ``resync`` (a
``get_states`` snapshot) are written as ``state_changed`` events whose ``time_fired`` is the state's
``last_updated``: the same time the live event carried, so the writer produces the identical point.

``import`` (``ha-ingestor import history``) is shaped the same way and goes to its own queue file,
``import.db``. A long-term statistics row (``ha-ingestor import statistics``) is not an event::

    {"src": "ha", "rx": <ns>, "kind": "statistics",
     "statistic": {"statistic_id": "sensor.energy", "period": "hour", "unit": "kWh",
                   "source": "recorder", "start": <period start, ms>,
                   "mean": .., "min": .., "max": .., "sum": .., "state": .., "last_reset": <ms>}}

A frame the HA collector cannot read (not JSON, not UTF-8, nested too deeply to parse) is kept
whole in the dead-letter store, never queued::

    {"src": "ha", "rx": <ns>, "kind": "live", "frame": "<text or base64>", "pe": "utf8" | "b64",
     "error": "<why>"}
"""

from __future__ import annotations

import base64
import time
from typing import Any

MQTT = "mqtt"
HA = "ha"
SOURCES = (MQTT, HA)
IMPORT = "import"                   # the queue file of `ha-ingestor import` (import.db)
QUEUES = (MQTT, HA, IMPORT)         # every queue file, live ones first

KIND_LIVE = "live"
KIND_BACKFILL = "backfill"
KIND_RESYNC = "resync"
KIND_IMPORT = "import"              # a state change read from HA's recorder by `import history`
KIND_STATISTICS = "statistics"      # one long-term statistics row (`import statistics`)
HA_KINDS = (KIND_LIVE, KIND_BACKFILL, KIND_RESYNC, KIND_IMPORT)

# HA's name (its location_name), kept by the HA collector in ha.db's meta table: the default name
# of a fleet site (nats.site).
HA_NAME_META_KEY = "ha.location_name"


def now_ns() -> int:
    return time.time_ns()


def mqtt_event(topic: str, payload: bytes, qos: int, retain: bool,
               received_ns: int | None = None) -> dict[str, Any]:
    """Envelope for one MQTT message; ``payload`` is stored so that it round-trips exactly."""
    try:
        text, encoding = payload.decode("utf-8"), "utf8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(payload).decode("ascii"), "b64"
    return {"src": MQTT, "rx": received_ns if received_ns is not None else now_ns(),
            "topic": topic, "qos": qos, "retain": bool(retain), "p": text, "pe": encoding}


def mqtt_payload(event: dict[str, Any]) -> bytes:
    """The original payload bytes of an MQTT envelope."""
    if event.get("pe") == "b64":
        return base64.b64decode(event["p"])
    return event["p"].encode("utf-8")


def ha_event(event: dict[str, Any], kind: str = KIND_LIVE,
             received_ns: int | None = None) -> dict[str, Any]:
    """Envelope for one HA event (the ``event`` object of an HA ``event`` frame, untouched)."""
    if kind not in HA_KINDS:
        raise ValueError(f"kind must be one of {', '.join(HA_KINDS)}, got {kind!r}")
    return {"src": HA, "rx": received_ns if received_ns is not None else now_ns(),
            "kind": kind, "event": event}


def unreadable_frame(frame: bytes | str, reason: str, received_ns: int) -> dict[str, Any]:
    """Envelope that keeps an unreadable HA frame exactly (text, or base64 when not UTF-8)."""
    data = frame.encode("utf-8", "surrogatepass") if isinstance(frame, str) else bytes(frame)
    try:
        text, encoding = data.decode("utf-8"), "utf8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(data).decode("ascii"), "b64"
    return {"src": HA, "rx": received_ns, "kind": KIND_LIVE, "frame": text, "pe": encoding,
            "error": reason}


def state_as_event(state: dict[str, Any], kind: str, received_ns: int | None = None,
                   ) -> dict[str, Any]:
    """Envelope for a state read back from HA (recorder history or ``get_states``), shaped as the
    ``state_changed`` event that produced it: ``time_fired`` = ``last_updated``."""
    event = {"event_type": "state_changed",
             "data": {"entity_id": state["entity_id"], "old_state": None, "new_state": state},
             "origin": "LOCAL", "time_fired": state["last_updated"],
             "context": state.get("context")}
    return ha_event(event, kind, received_ns)


def statistic_row(statistic: dict[str, Any], received_ns: int | None = None) -> dict[str, Any]:
    """Envelope for one long-term statistics row (``import statistics``)."""
    return {"src": HA, "rx": received_ns if received_ns is not None else now_ns(),
            "kind": KIND_STATISTICS, "statistic": statistic}


def describe(event: dict[str, Any]) -> str:
    """A short human label for logs and ``queue peek``: the topic or the event type and entity."""
    if event.get("src") == MQTT:
        return f"mqtt {event.get('topic')}"
    if event.get("kind") == KIND_STATISTICS:
        stat = event.get("statistic") or {}
        return f"ha statistics {stat.get('statistic_id', '?')} {stat.get('period', '')}".rstrip()
    inner = event.get("event") or {}
    entity = (inner.get("data") or {}).get("entity_id") or ""
    return f"ha {event.get('kind', '?')} {inner.get('event_type', '?')} {entity}".rstrip()
