"""One envelope from the queue → zero or one line of line protocol.

``Converter.convert`` is pure: the same envelope always gives the same line, so a replayed event
rewrites the identical point. Whatever converting one event raises is that event's problem only:
it becomes a ConversionError naming what is wrong, and the loop dead-letters the event with it.
"""

from __future__ import annotations

import logging
from typing import Any

from ha_ingestor.config.schema import SchemaConfig
from ha_ingestor.envelope import HA, KIND_STATISTICS, MQTT
from ha_ingestor.errors import ConversionError
from writer.schema_events import EventsSchemaHA
from writer.schema_ha import StateChangedSchemaHA
from writer.schema_mqtt import MqttSchemaConverter
from writer.schema_statistics import StatisticsSchemaHA

__all__ = ["ConversionError", "Converter"]

log = logging.getLogger("writer")


class Converter:
    def __init__(self, schema: SchemaConfig):
        self.schema = schema
        self.states = StateChangedSchemaHA(schema.state_changed, schema.limits)
        self.events = EventsSchemaHA(schema.events, schema.limits)
        self.mqtt = MqttSchemaConverter(schema.mqtt, schema.limits)
        self.statistics = StatisticsSchemaHA(schema.statistics)

    def encode(self, envelope: dict[str, Any]) -> tuple[bytes | None, str | None, str | None]:
        """What the writer sends for ``envelope``: (the UTF-8 line, None, None), (None, None,
        None) when the schema writes nothing for it, or (None, dead-letter reason, kind).
        Never raises. ``ha-ingestor convert`` prints exactly this."""
        try:
            line = self.convert(envelope)
            return (None if line is None else line.encode("utf-8")), None, None
        except ConversionError as exc:
            return None, f"conversion: {exc}", exc.kind
        except UnicodeEncodeError as exc:
            return None, f"conversion: {_not_unicode(exc)}", "text"
        except Exception as exc:  # noqa: BLE001 - a bug must cost one event, not the writer
            log.exception("unexpected error converting an event; it is a dead letter")
            return None, f"conversion: unexpected {type(exc).__name__}: {exc}", "unexpected"

    def convert(self, envelope: dict[str, Any]) -> str | None:
        """The line for ``envelope``, or None when the schema writes nothing for it.

        Raises ConversionError naming what is wrong with the event, whatever went wrong."""
        try:
            return self._convert(envelope)
        except ConversionError:
            raise
        except Exception as exc:       # noqa: BLE001 - one event's problem, never the writer's
            raise ConversionError(_describe(exc), _kind(exc)) from None

    def _convert(self, envelope: dict[str, Any]) -> str | None:
        if not isinstance(envelope, dict):
            raise ConversionError(f"not an event envelope: {type(envelope).__name__}")
        source = envelope.get("src")
        if source == MQTT:
            return self.mqtt.to_line(envelope)
        if source == HA:
            if envelope.get("kind") == KIND_STATISTICS:
                return self.statistics.to_line(envelope["statistic"])
            if "event" not in envelope and "frame" in envelope:
                raise ConversionError(f"a Home Assistant frame the collector could not read: "
                                      f"{envelope.get('error', '?')}", "unreadable")
            event = envelope["event"]
            if event["event_type"] == "state_changed":
                if not self.schema.state_changed.enabled:
                    return None
                return self.states.to_line(event)
            return self.events.to_line(event)
        raise ConversionError(f"unknown event source {source!r} (expected mqtt or ha)")


def _not_unicode(exc: UnicodeEncodeError) -> str:
    """Where a line holds text InfluxDB cannot store (a lone surrogate from a JSON escape)."""
    text = exc.object
    before = text[max(0, exc.start - 60):exc.start]
    return (f"text that is not valid Unicode ({text[exc.start:exc.end]!r} at character "
            f"{exc.start} of the line, after {before!r}); InfluxDB stores only UTF-8")


def _describe(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"malformed event: missing {exc.args[0]!r}"
    if isinstance(exc, (TypeError, AttributeError)):
        return f"malformed event: {exc}"
    if isinstance(exc, RecursionError):
        return "malformed event: nested too deeply to convert"
    if isinstance(exc, (ValueError, OverflowError)):
        return str(exc)
    return f"unexpected {type(exc).__name__} while converting: {exc}"


def _kind(exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        return "limit"
    if isinstance(exc, (KeyError, TypeError, AttributeError, ValueError, OverflowError)):
        return "malformed"
    return "unexpected"
