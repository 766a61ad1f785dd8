"""Events given by hand to ``ha-ingestor convert``, as queue envelopes.

Accepted, one after the other in the same input (JSON values may span lines):

- queue envelopes, as ``queue peek --json`` prints them (``{"src": "mqtt"|"ha", ...}``);
- dead letters, as ``queue dead --json`` prints them (their ``event``);
- Home Assistant WebSocket frames (``{"type": "event", "event": {...}}``), lists of frames
  (HA's coalesced messages) and bare HA events (``{"event_type": ..., "data": ...}``);
- ``mosquitto_sub -v`` output (``TOPIC PAYLOAD`` per line) with ``mosquitto_sub=True``.

Frames that carry no event (``result``, ``auth_ok``, ``pong``) are skipped and named.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterator

from ha_ingestor.envelope import HA, MQTT, ha_event, mqtt_event, now_ns
from ha_ingestor.errors import ConfigError


@dataclass(frozen=True)
class Given:
    """One input item: an envelope to convert, or why it is not one (``skipped``)."""

    where: str
    envelope: dict | None = None
    skipped: str | None = None


def from_text(text: str, received_ns: int | None = None, name: str = "input"
              ) -> Iterator[Given]:
    """Every JSON value of ``text`` (``name``: where it came from), in order. Raises
    ConfigError at text that is not JSON."""
    decoder = json.JSONDecoder()
    position, count = 0, 0
    while True:
        position = _skip_space(text, position)
        if position >= len(text):
            return
        try:
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            line = text.count("\n", 0, exc.pos) + 1
            raise ConfigError(f"{name} is not JSON at line {line}: {exc.msg}") from None
        count += 1
        yield from from_value(value, f"{name} #{count}", received_ns)


def from_value(value: Any, where: str, received_ns: int | None = None) -> Iterator[Given]:
    if isinstance(value, list):
        for index, item in enumerate(value):
            yield from from_value(item, f"{where}[{index}]", received_ns)
        return
    if not isinstance(value, dict):
        yield Given(where, skipped=f"not an event: a JSON {type(value).__name__}")
    elif value.get("src") in (MQTT, HA):
        yield Given(where, envelope=value)
    elif "event" in value and "reason" in value and "source" in value:     # queue dead --json
        yield Given(where, envelope=value["event"])
    elif value.get("type") == "event" and isinstance(value.get("event"), dict):
        yield Given(where, envelope=ha_event(value["event"], received_ns=received_ns))
    elif "event_type" in value:
        yield Given(where, envelope=ha_event(value, received_ns=received_ns))
    else:
        kind = value.get("type")
        yield Given(where, skipped=f"a {kind!r} frame carries no event" if kind else
                    "not an event: no src, type or event_type")


def mqtt_message(topic: str, payload: str, qos: int = 1, retain: bool = False,
                 received_ns: int | None = None) -> Given:
    return Given("argument", envelope=mqtt_event(topic, payload.encode("utf-8"), qos, retain,
                                                      received_ns if received_ns is not None
                                                      else now_ns()))


def from_mosquitto_sub(text: str, received_ns: int | None = None, name: str = "input"
                       ) -> Iterator[Given]:
    """``mosquitto_sub -v`` lines: the topic, one space, the payload (tabs also separate)."""
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        separator = min((i for i in (line.find(" "), line.find("\t")) if i > 0), default=-1)
        topic, payload = (line[:separator], line[separator + 1:]) if separator > 0 else (line, "")
        given = mqtt_message(topic, payload, received_ns=received_ns)
        yield Given(f"{name} line {number}", envelope=given.envelope)


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position
