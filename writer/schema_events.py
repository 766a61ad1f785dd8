"""Every HA event type other than ``state_changed`` → one point in ``ha_events`` (configurable).

Tags: ``event_type`` and, where the event carries them, ``domain``, ``service`` and ``entity_id``
(from ``data.entity_id`` or ``data.service_data.entity_id``; several ids are joined with ``,``).
Fields: ``fired`` = 1.0 (so every event has a field and ``count(fired)`` counts events), the
context ids as ``context_id_str``, ``context_parent_id_str``, ``context_user_id_str``, and the
event data flattened by the stable-type rule of ``writer.fields`` (tag keys are not repeated as
fields; a data key that meets a name already used gets ``_``). Keys in ``secret_keys`` (alarm
codes, PINs, passwords, tokens in ``service_data`` or anywhere in the data) are not written and
are counted. Time: ``time_fired`` in ns. Names and text are stored exactly as sent
(``writer.lineprotocol.EXACT``).
"""

from __future__ import annotations

from typing import Any

from ha_ingestor import metrics
from ha_ingestor.config.schema import EventsSchema, SchemaLimits
from ha_ingestor.envelope import HA
from ha_ingestor.errors import ConversionError
from writer.fields import Flattener, flatten_value
from writer.lineprotocol import make_line
from writer.schema_ha import time_to_ns

_TAG_KEYS = ("domain", "service", "entity_id")


class EventsSchemaHA:
    def __init__(self, config: EventsSchema, limits: SchemaLimits = SchemaLimits()):
        self.config = config
        self.include = set(config.include)
        self.exclude = set(config.exclude)
        self.flattener = Flattener(limits, secret_keys=config.secret_keys)
        self._withheld = metrics.SECRETS_WITHHELD.labels(source=HA)

    def wanted(self, event_type: str) -> bool:
        if not self.config.enabled or event_type in self.exclude:
            return False
        return not self.include or event_type in self.include

    def to_line(self, event: dict[str, Any]) -> str | None:
        event_type = event["event_type"]
        if not self.wanted(event_type):
            return None
        data = event.get("data") or {}
        if not isinstance(data, dict):
            raise ConversionError(f"event data must be an object, got {type(data).__name__}")
        tags = {"event_type": event_type}
        for key in _TAG_KEYS:
            value = data.get(key)
            if type(value) is str:
                tags[key] = value
        if "entity_id" not in tags:
            entity_ids = _entity_ids(data)
            if entity_ids:
                tags["entity_id"] = entity_ids
        fields: dict[str, float | str] = {"fired": 1.0}
        context = event.get("context")
        if isinstance(context, dict):
            for key in ("id", "parent_id", "user_id"):
                if type(context.get(key)) is str:
                    fields[f"context_{key}_str"] = context[key]
        fields, withheld = flatten_value(data, self.flattener, into=fields, skip_text=_TAG_KEYS)
        if withheld:
            self._withheld.inc(withheld)
        return make_line(self.config.measurement, tags, fields, time_to_ns(event["time_fired"]))


def _entity_ids(data: dict) -> str | None:
    """``entity_id`` of a call_service (in ``service_data``; a string or a list)."""
    candidates = [data.get("entity_id")]
    service_data = data.get("service_data")
    if isinstance(service_data, dict):
        candidates.append(service_data.get("entity_id"))
    for value in candidates:
        if type(value) is str and value:
            return value
        if isinstance(value, list) and value and all(type(v) is str for v in value):
            return ",".join(value)
    return None
