"""The ``ha-ingestor`` command line: one entry point for every process and every inspection.

Exit codes are listed in ``ha_ingestor.errors`` and in ``ha-ingestor --help``.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
import time
from pathlib import Path

import click
import yaml

from ha_ingestor import __version__, cli_convert, metrics, metrics_influx, queue, statusview
from ha_ingestor.config import default_config_path, load_config, load_queue_config, redacted
from ha_ingestor.envelope import QUEUES, describe
from ha_ingestor.errors import (EXIT_CODES, EXIT_CONFIG, EXIT_FAILURE, ConfigError, IngestorError,
                                QueueError)
from ha_ingestor.lifecycle import HEARTBEAT, StopFlag, die_with_parent
from ha_ingestor.logs import FORMATS, LEVELS, setup_logging

log = logging.getLogger("ha_ingestor")

ENTRY_POINTS = {"mqtt": "collectors.mqtt", "ha": "collectors.homeassistant", "writer": "writer",
                "central": "writer.fleet.central"}
COMPLETE_VAR = "_HA_INGESTOR_COMPLETE"
EXIT_HELP = "Exit codes: " + "; ".join(f"{code} {text}" for code, text in EXIT_CODES.items())


class Context:
    def __init__(self, config_path: Path | None, log_level: str, log_format: str):
        self.config_path = config_path
        self.log_level = log_level
        self.log_format = log_format
        self._config = None

    @property
    def config(self):
        if self._config is None:
            self._config = load_config(self.config_path)
        return self._config


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.group(epilog=EXIT_HELP)
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Config file (default: $HA_INGESTOR_CONFIG, then "
                                 "./ha-ingestor.yaml).")
@click.option("--log-level", type=click.Choice(LEVELS), default="info", show_default=True)
@click.option("--log-format", type=click.Choice(FORMATS), default="text", show_default=True)
@click.version_option(__version__, prog_name="ha-ingestor")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, log_level: str, log_format: str) -> None:
    """HA Ingestor: Home Assistant's MQTT broker and event bus into InfluxDB, losing nothing."""
    ctx.obj = Context(config_path or default_config_path(), log_level, log_format)


def main() -> None:
    try:
        cli.main(standalone_mode=False, prog_name="ha-ingestor", complete_var=COMPLETE_VAR)
    except click.exceptions.Abort:
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_CONFIG)     # usage errors share the "bad config or usage" code
    except IngestorError as exc:
        _fail(str(exc), exc.exit_code)
    sys.exit(0)


# ---- processes ----------------------------------------------------------------------------

def _run_component(ctx: Context, name: str) -> None:
    setup_logging(ctx.log_level, ctx.log_format, name)
    config = ctx.config
    metrics.set_build_info(name)
    stop = StopFlag().install()
    die_with_parent(stop)
    HEARTBEAT.timeout = config.run.stall_timeout
    HEARTBEAT.report_to_supervisor()
    exporter = metrics_influx.start(config, name)
    try:
        module = importlib.import_module(ENTRY_POINTS[name])
        code = module.run(config, stop)
    except IngestorError as exc:
        log.error("%s", exc)
        code = exc.exit_code
    except Exception:  # a bug: log it whole and exit non-zero so the supervisor restarts us
        log.exception("%s stopped on an unexpected error", name)
        code = EXIT_FAILURE
    if exporter is not None:
        exporter.close()
    sys.exit(code)


@cli.group()
def collect() -> None:
    """Run a collector (source → durable queue)."""


@collect.command("mqtt")
@click.pass_obj
def collect_mqtt(ctx: Context) -> None:
    """Run the MQTT collector: every message on the broker into <queue.dir>/mqtt.db."""
    _run_component(ctx, "mqtt")


@collect.command("ha")
@click.pass_obj
def collect_ha(ctx: Context) -> None:
    """Run the Home Assistant WebSocket collector into <queue.dir>/ha.db."""
    _run_component(ctx, "ha")


@cli.command("write")
@click.option("--from-nats", "from_nats", is_flag=True,
              help="Run a central writer of a fleet: NATS JetStream (the nats: section) → "
                   "InfluxDB. Run several to share the load.")
@click.pass_obj
def write(ctx: Context, from_nats: bool) -> None:
    """Run the writer: queue files → InfluxDB (or, with nats.publish, → NATS JetStream)."""
    _run_component(ctx, "central" if from_nats else "writer")


@cli.command("run")
@click.pass_obj
def run(ctx: Context) -> None:
    """Run every enabled component as its own child process under one supervisor."""
    setup_logging(ctx.log_level, ctx.log_format, "run")
    config = ctx.config
    metrics.set_build_info("run")
    stop = StopFlag().install()
    HEARTBEAT.timeout = config.run.stall_timeout
    from ha_ingestor import supervisor
    exporter = metrics_influx.start(config, "run")
    code = supervisor.run(config, stop, child_argv(ctx, config.enabled_components()))
    if exporter is not None:
        exporter.close()
    sys.exit(code)


def child_argv(ctx: Context, components: list[str]) -> dict[str, list[str]]:
    """The command line of each child process of ``run``."""
    base = [sys.executable, "-m", "ha_ingestor", "--log-level", ctx.log_level,
            "--log-format", ctx.log_format]
    if ctx.config_path:
        base += ["--config", str(ctx.config_path)]
    tail = {"mqtt": ["collect", "mqtt"], "ha": ["collect", "ha"], "writer": ["write"]}
    return {name: base + tail[name] for name in components}


@cli.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL. Bash: add
    ``eval "$(ha-ingestor completion bash)"`` to ~/.bashrc (zsh: ~/.zshrc; fish:
    ``ha-ingestor completion fish > ~/.config/fish/completions/ha-ingestor.fish``)."""
    from click.shell_completion import get_completion_class
    script = get_completion_class(shell)(cli, {}, "ha-ingestor", COMPLETE_VAR).source()
    click.echo(script)


# ---- config -------------------------------------------------------------------------------

@cli.group("config")
def config_group() -> None:
    """Validate or print the configuration."""


@config_group.command("check")
@click.argument("file", required=False, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--connect", is_flag=True, help="Also connect to the MQTT broker, Home Assistant "
              "and InfluxDB with the configured credentials (exit 3 if any refuses them or "
              "lacks the database/bucket, 1 if any cannot be reached).")
@click.pass_obj
def config_check(ctx: Context, file: str | None, connect: bool) -> None:
    """Validate the configuration (or FILE; ``-`` reads it from standard input); exit 2 with the
    offending key if it is invalid."""
    config = _config_from(ctx, file)
    where = config.source or "defaults and environment (no config file)"
    click.echo(f"config OK: {where}; components: {', '.join(config.enabled_components())}")
    if connect:
        sys.exit(_check_connections(config))


def _check_connections(config) -> int:
    from ha_ingestor import connectcheck
    outcomes = []
    for target in connectcheck.targets(config):
        outcome = connectcheck.check(config, target)
        outcomes.append(outcome)
        click.echo(f"{target:<14} {outcome.label:<8} {outcome.message}")
    return connectcheck.exit_code(outcomes)


def _config_from(ctx: Context, file: str | None):
    if file == "-":
        return load_config(None, text=click.get_text_stream("stdin").read())
    return load_config(Path(file)) if file else ctx.config


@config_group.command("import-ha")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--secrets", "secrets", type=click.Choice(["env", "files"]), default="env",
              show_default=True, help="Print passwords and tokens as ${VAR} references (env) "
              "or as *_file paths under /run/secrets (files).")
def config_import_ha(path: Path, secrets: str) -> None:
    """Print an HA Ingestor config equivalent to the influxdb: block of Home Assistant's
    PATH/configuration.yaml (includes, !secret, !env_var and packages followed as Home
    Assistant follows them). Secrets are printed as references, never their values."""
    import os

    from ha_ingestor.haimport import import_ha
    click.echo(import_ha(path, os.environ, files=secrets == "files"))


@config_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of YAML.")
@click.pass_obj
def config_show(ctx: Context, as_json: bool) -> None:
    """Print the effective configuration with secrets shown as ***."""
    data = redacted(ctx.config)
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(yaml.safe_dump(data, sort_keys=False), nl=False)


# ---- nats ---------------------------------------------------------------------------------

@cli.group("nats")
def nats_group() -> None:
    """Fleets through NATS JetStream: set up and inspect the streams (docs/fleet.md).
    Exit codes: 1 NATS unreachable, 2 bad config, 3 credentials refused."""


@nats_group.command("init")
@click.option("--update", is_flag=True, help="Apply the config to streams that exist (where "
                                             "JetStream allows a change).")
@click.pass_obj
def nats_init(ctx: Context, update: bool) -> None:
    """Create the points stream, the dead-letter stream and the central writers' durable
    consumer from the nats: section; report what exists already and how it differs."""
    from writer.fleet import commands
    for line in commands.init(ctx.config, update):
        click.echo(line)


@nats_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object for monitoring scripts.")
@click.pass_obj
def nats_status(ctx: Context, as_json: bool) -> None:
    """Messages in the stream, pending for the central writers, dead letters."""
    from writer.fleet import commands
    status = commands.status(ctx.config)
    if as_json:
        click.echo(json.dumps(status))
        return
    nats = ctx.config.nats
    if status["stream"] is None:
        click.echo(f"stream {nats.stream} does not exist: run ha-ingestor nats init")
        return
    st, consumer = status["stream"], status["consumer"]
    click.echo(f"stream {st['name']}: {st['messages']} messages, {_size(st['bytes'])}, "
               f"replicas {st['replicas']}, leader {st['leader'] or '-'}")
    if consumer is None:
        click.echo(f"consumer {nats.durable} does not exist: run ha-ingestor nats init")
        return
    click.echo(f"consumer {consumer['name']}: {consumer['pending']} pending, "
               f"{consumer['ack_pending']} taken and not acked, {consumer['redelivered']} "
               f"redelivered, {consumer['waiting']} writers waiting")
    click.echo(f"dead letters: {status['dead_letters']}")


@nats_group.command("dead")
@click.option("--json", "as_json", is_flag=True, help="JSON lines.")
@click.option("-n", "--limit", default=None, type=click.IntRange(1), help="At most this many.")
@click.pass_obj
def nats_dead(ctx: Context, as_json: bool, limit: int | None) -> None:
    """List the points InfluxDB rejected at the central writers, with the reason."""
    from writer.fleet import commands
    letters = commands.list_dead(ctx.config, limit)
    for letter in letters:
        click.echo(json.dumps(letter) if as_json else
                   f"#{letter['seq']} site {letter['site']}: {letter['reason']}\n"
                   f"    {letter['line'][:300]}")
    if not as_json:
        click.echo(f"{len(letters)} dead letter(s)")


@nats_group.command("requeue-dead")
@click.option("--seq", "seqs", multiple=True, type=int, help="Only these (repeat).")
@click.pass_obj
def nats_requeue_dead(ctx: Context, seqs: tuple[int, ...]) -> None:
    """Publish dead letters back to their site's subject (after fixing what rejected them)."""
    from writer.fleet import commands
    count = commands.requeue_dead(ctx.config, set(seqs) or None)
    click.echo(f"requeued {count} dead letter(s)")


# ---- queue --------------------------------------------------------------------------------

def _queue_dir(ctx: Context, override: Path | None) -> Path:
    return override if override else load_queue_config(ctx.config_path).dir


def _sources(source: str | None) -> tuple[str, ...]:
    return (source,) if source else QUEUES


queue_dir_option = click.option("--queue-dir", type=click.Path(file_okay=False, path_type=Path),
                                 default=None, help="Queue directory (default: queue.dir).")
source_option = click.option("--source", type=click.Choice(QUEUES), default=None,
                             help="Only this queue (default: every queue).")


@cli.group("queue")
def queue_group() -> None:
    """Inspect and repair the durable queues. Safe while collectors and the writer run."""


@queue_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object for monitoring scripts.")
@click.option("--watch", type=click.FloatRange(0.2), is_flag=False, flag_value=2.0,
              default=None, help="Refresh every N seconds (default 2) with each queue's drain "
              "rate and the time until it is empty; Ctrl-C stops.")
@click.option("--count", type=click.IntRange(1), default=None,
              help="With --watch: stop after this many refreshes.")
@queue_dir_option
@click.pass_obj
def queue_status(ctx: Context, as_json: bool, watch: float | None, count: int | None,
                 queue_dir: Path | None) -> None:
    """Per queue: events ready, in flight, dead letters, oldest event age, bytes on disk.
    Needs only the queue: section of the config and read access to queue.dir."""
    qdir = _queue_dir(ctx, queue_dir)

    def read() -> dict:
        return {source: queue.read_status(qdir, source) for source in QUEUES}

    if as_json:
        click.echo(statusview.as_json(read(), queue.QueueStatus(0, 0, 0, None, 0)))
    elif watch is not None:
        statusview.watch(qdir, read, watch, count, clear=sys.stdout.isatty())
    else:
        click.echo(statusview.table(qdir, read()))


@queue_group.command("peek")
@source_option
@click.option("-n", "--limit", default=10, show_default=True, type=click.IntRange(1, 100000))
@click.option("--json", "as_json", is_flag=True, help="Print the whole envelopes as JSON lines.")
@click.option("--lines", is_flag=True, help="Under each event, the line protocol the writer "
              "will send for it (or why it will be a dead letter), as `convert` prints it.")
@queue_dir_option
@click.pass_obj
def queue_peek(ctx: Context, source: str | None, limit: int, as_json: bool, lines: bool,
               queue_dir: Path | None) -> None:
    """Show the oldest queued events without taking them."""
    qdir = _queue_dir(ctx, queue_dir)
    converter = cli_convert.converter_for(ctx.config_path) if lines else None
    for src in _sources(source):
        events = queue.peek(qdir, src, limit)
        if not as_json:
            click.echo(f"{src}: {len(events)} oldest event(s)")
        for event in events:
            click.echo(json.dumps(event) if as_json else
                       cli_convert.printable(f"  {_stamp(event)} {describe(event)}"))
            if converter is not None:
                click.echo(f"    {cli_convert.outcome_text(converter, event)[0]}")


def _stamp(event: dict) -> str:
    rx = event.get("rx")
    if not isinstance(rx, int):
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(rx / 1e9)) + "Z"


@queue_group.command("dead")
@source_option
@click.option("--json", "as_json", is_flag=True, help="JSON lines with the whole event.")
@click.option("-n", "--limit", default=None, type=click.IntRange(1), help="At most this many.")
@queue_dir_option
@click.pass_obj
def queue_dead(ctx: Context, source: str | None, as_json: bool, limit: int | None,
               queue_dir: Path | None) -> None:
    """List dead letters: events that could not be written, with the reason."""
    qdir = _queue_dir(ctx, queue_dir)
    total = 0
    for src in _sources(source):
        for letter in queue.list_dead(qdir, src, limit):
            total += 1
            if as_json:
                click.echo(json.dumps({"id": letter.id, "source": src, "reason": letter.reason,
                                       "at": letter.at, "event": letter.event}))
            else:
                click.echo(f"{src} #{letter.id} {describe(letter.event)}: {letter.reason}")
    if not as_json:
        click.echo(f"{total} dead letter(s)")


@queue_group.command("requeue-dead")
@source_option
@click.option("--id", "ids", multiple=True, type=int, help="Only these dead letters (repeat).")
@queue_dir_option
@click.pass_obj
def queue_requeue_dead(ctx: Context, source: str | None, ids: tuple[int, ...],
                       queue_dir: Path | None) -> None:
    """Put dead letters back into their queue (after fixing what rejected them)."""
    qdir = _queue_dir(ctx, queue_dir)
    for src in _sources(source):
        count = queue.requeue_dead(qdir, src, ids or None)
        click.echo(f"{src}: requeued {count} dead letter(s)")


@queue_group.command("dead-letter-item")
@click.argument("source", type=click.Choice(QUEUES))
@click.argument("item_id", metavar="ID", type=click.IntRange(1))
@click.option("--reason", default="moved aside by an operator", show_default=True,
              help="Kept with every event of the item.")
@queue_dir_option
@click.pass_obj
def queue_dead_letter_item(ctx: Context, source: str, item_id: int, reason: str,
                           queue_dir: Path | None) -> None:
    """Move one queue item (a batch of events, ready or taken) to the dead-letter store.

    For an item that keeps the writer from making progress (its log names the item it died on;
    the writer also does this itself after queue.move_aside_after deaths). `queue dead` lists the
    events afterwards, `queue requeue-dead` brings them back."""
    qdir = _queue_dir(ctx, queue_dir)
    count = queue.dead_letter_item(qdir, source, item_id, reason)
    click.echo(f"{source}: moved item {item_id} ({count} event(s)) to the dead-letter store: "
               f"{reason}")


@queue_group.command("purge")
@source_option
@click.option("--dead", is_flag=True, help="Also delete the dead letters.")
@click.option("--yes", is_flag=True, help="Required: confirms that queued events are deleted.")
@queue_dir_option
@click.pass_obj
def queue_purge(ctx: Context, source: str | None, dead: bool, yes: bool,
                queue_dir: Path | None) -> None:
    """Delete queued events that were not written yet. They are lost: requires --yes."""
    if not yes:
        raise click.UsageError("queue purge deletes queued events for good; add --yes")
    qdir = _queue_dir(ctx, queue_dir)
    for src in _sources(source):
        click.echo(f"{src}: deleted {queue.purge(qdir, src, dead)} event(s)")


cli.add_command(cli_convert.convert)


def _add_import_commands() -> None:
    from ha_ingestor.cli_import import COMMANDS
    for command in COMMANDS:
        cli.add_command(command)


_add_import_commands()

__all__ = ["cli", "main", "child_argv", "ConfigError", "QueueError"]
