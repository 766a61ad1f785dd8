"""``ha-ingestor convert``: the line protocol an event becomes, or why it becomes a dead letter,
from the writer's own converter (``writer.convert.Converter.encode``): what it prints is byte for
byte what the writer sends. ``queue peek --lines`` uses the same.

    ha-ingestor queue peek --json | ha-ingestor convert
    ha-ingestor convert event_state_changed.json           # HA frames, events, envelopes
    ha-ingestor convert mqtt zigbee2mqtt/kitchen '{"temperature": 21.5}'
    mosquitto_sub -v -t 'tele/#' | ha-ingestor convert --mosquitto-sub

Needs only the ``schema:`` section of the config. Lines that are not points start with ``#``
(InfluxDB's comment), so the output can be fed to InfluxDB as it is. Exit 0, or 1 when any event
would be a dead letter; 2 for input that is not JSON.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ha_ingestor import eventinput
from ha_ingestor.config import load_schema_config
from ha_ingestor.envelope import describe
from ha_ingestor.errors import EXIT_FAILURE, EXIT_OK


def converter_for(config_path: Path | None):
    from writer.convert import Converter
    return Converter(load_schema_config(config_path))


def outcome_text(converter, envelope: dict) -> tuple[str, bool]:
    """(what to print, whether it is a dead letter) for one envelope."""
    data, reason, _kind = converter.encode(envelope)
    if reason is not None:
        return f"# dead letter: {printable(reason)}", True
    if data is None:
        return "# no point: the schema writes nothing for this event", False
    return data.decode("utf-8"), False


@click.command("convert")
@click.argument("inputs", nargs=-1)
@click.option("--mosquitto-sub", is_flag=True, help="Read `mosquitto_sub -v` lines (TOPIC "
              "PAYLOAD) instead of JSON.")
@click.option("--retain", is_flag=True, help="With `mqtt TOPIC PAYLOAD`: a retained message.")
@click.option("--time", "received_ns", type=int, default=None, help="Receive time in ns for MQTT "
              "messages and HA frames (default: now).")
@click.pass_obj
def convert(ctx, inputs: tuple[str, ...], mosquitto_sub: bool, retain: bool,
            received_ns: int | None) -> None:
    """Print the line protocol that events become, or why each becomes a dead letter.

    INPUTS: files of JSON (queue envelopes as `queue peek --json` prints them, dead letters as
    `queue dead --json` prints them, Home Assistant WebSocket frames or events), `-` or nothing
    for standard input, or `mqtt TOPIC PAYLOAD` for one MQTT message."""
    converter = converter_for(ctx.config_path)
    dead = 0
    for given in _given(inputs, mosquitto_sub, retain, received_ns):
        if given.envelope is None:
            click.echo(printable(f"# {given.where}: skipped, {given.skipped}"))
            continue
        text, is_dead = outcome_text(converter, given.envelope)
        dead += is_dead
        click.echo(printable(f"# {given.where}: {describe(given.envelope)}"))
        click.echo(text)
    sys.exit(EXIT_FAILURE if dead else EXIT_OK)


def printable(comment: str) -> str:
    """A comment line as valid UTF-8 on one line: lone surrogates and line breaks escaped."""
    comment = comment.encode("utf-8", "backslashreplace").decode("utf-8")
    return comment.replace("\r", "\\r").replace("\n", "\\n").replace("\x85", "\\x85") \
        .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _given(inputs, mosquitto_sub: bool, retain: bool, received_ns: int | None):
    if inputs[:1] == ("mqtt",):
        if len(inputs) != 3:
            raise click.UsageError("usage: ha-ingestor convert mqtt TOPIC PAYLOAD")
        yield eventinput.mqtt_message(inputs[1], inputs[2], retain=retain,
                                      received_ns=received_ns)
        return
    for name in inputs or ("-",):
        text = click.get_text_stream("stdin").read() if name == "-" else _read(name)
        label = "stdin" if name == "-" else name
        if mosquitto_sub:
            yield from eventinput.from_mosquitto_sub(text, received_ns, label)
        else:
            yield from eventinput.from_text(text, received_ns, label)


def _read(name: str) -> str:
    try:
        return Path(name).read_text(encoding="utf-8")
    except OSError as exc:
        raise click.UsageError(f"cannot read {name}: {exc.strerror}") from None
