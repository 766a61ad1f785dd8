"""One envelope from the queue → zero or one line of line protocol.

``Converter.convert`` is pure: the same envelope always gives the same line, so a replayed event
rewrites the identical point. Any error raised while converting one event is that event's problem
only: the loop dead-letters it with the message and carries on.
"""

from __future__ import annotations

from typing import Any

from ha_ingestor.config.schema import SchemaConfig
from ha_ingestor.envelope import HA, MQTT
from writer.schema_events import EventsSchemaHA
from writer.schema_ha import StateChangedSchemaHA
from writer.schema_mqtt import MqttSchemaConverter


class ConversionError(ValueError):
    """This event cannot become a point; the message says why."""


class Converter:
    def __init__(self, schema: SchemaConfig):
        self.schema = schema
        self.states = StateChangedSchemaHA(schema.state_changed)
        self.events = EventsSchemaHA(schema.events)
        self.mqtt = MqttSchemaConverter(schema.mqtt)

    def convert(self, envelope: dict[str, Any]) -> str | None:
        """The line for ``envelope``, or None when the schema writes nothing for it.

        Raises ConversionError naming what is wrong with the event."""
        try:
            return self._convert(envelope)
        except ConversionError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise ConversionError(_describe(exc)) from None

    def _convert(self, envelope: dict[str, Any]) -> str | None:
        if not isinstance(envelope, dict):
            raise ConversionError(f"not an event envelope: {type(envelope).__name__}")
        source = envelope.get("src")
        if source == MQTT:
            return self.mqtt.to_line(envelope)
        if source == HA:
            event = envelope["event"]
            if event["event_type"] == "state_changed":
                if not self.schema.state_changed.enabled:
                    return None
                return self.states.to_line(event)
            return self.events.to_line(event)
        raise ConversionError(f"unknown event source {source!r} (expected mqtt or ha)")


def _describe(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"malformed event: missing {exc.args[0]!r}"
    if isinstance(exc, (TypeError, AttributeError)):
        return f"malformed event: {exc}"
    return str(exc)
