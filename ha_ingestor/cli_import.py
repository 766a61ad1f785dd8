"""``ha-ingestor import history``, ``import statistics`` and ``verify``: the past into InfluxDB,
and the proof that nothing is missing (docs/import.md).

They read HA's recorder over its WebSocket API with the HA collector's connection settings
(``homeassistant.url``, ``token``, ``tls``) and append to ``<queue.dir>/import.db``, which a
running writer drains after the live queues. The work is in the ``importer`` package.
"""

from __future__ import annotations

import json
import logging
import sys

import click

from ha_ingestor.errors import EXIT_MISSING, EXIT_OK, IngestorError
from ha_ingestor.lifecycle import StopFlag
from ha_ingestor.logs import setup_logging

log = logging.getLogger("import")

since_option = click.option("--since", required=True, metavar="WHEN",
                            help="Start: ISO date/time (UTC unless a zone is given), 'now', "
                                 "or a duration before now (90m, 36h, 10d, 2w).")
until_option = click.option("--until", default=None, metavar="WHEN",
                            help="End (excluded); default: now.")
entity_option = click.option("--entity", "patterns", multiple=True, metavar="GLOB",
                             help="Only these entities (glob such as 'sensor.*', or an exact "
                                  "id; repeat). Default: every entity HA knows.")


def _start(ctx) -> tuple:
    setup_logging(ctx.log_level, ctx.log_format, "import")
    return ctx.config, StopFlag().install()


def _exit_on(exc: IngestorError) -> None:
    from importer.ha_reader import Stopped
    if isinstance(exc, Stopped):             # Ctrl-C or SIGTERM: a clean stop, resumable
        click.echo(f"{exc}; run the same command again to continue")
        sys.exit(EXIT_OK)
    click.echo(f"error: {exc}", err=True)
    sys.exit(exc.exit_code)


@click.group("import")
def import_group() -> None:
    """Import HA's recorded history or long-term statistics (into <queue.dir>/import.db)."""


@import_group.command("history")
@since_option
@until_option
@entity_option
@click.option("--dry-run", is_flag=True,
              help="Print the entities, windows and an estimate of the changes; store nothing.")
@click.pass_obj
def import_history(ctx, since: str, until: str | None, patterns: tuple[str, ...],
                   dry_run: bool) -> None:
    """State changes from HA's recorder, as the points HA's influxdb integration writes.

    Resumable: after a crash or Ctrl-C the same command continues where it stopped."""
    from importer import history
    from importer.ha_reader import HAReader
    config, stop = _start(ctx)
    command = {"since": since, "until": until, "entities": sorted(patterns)}
    try:
        with HAReader(config.homeassistant, config.imports.request_timeout, stop) as reader:
            plan = history.make_plan(config, reader, since, until, patterns)
            _describe_history(plan)
            if dry_run:
                estimated, sampled = history.estimate(reader, plan)
                click.echo(f"estimated state changes: {estimated} (from {sampled} sampled "
                           f"window(s)); nothing stored (--dry-run)")
                return
            outcome = history.run(config, plan, command, reader, stop, click.echo)
    except IngestorError as exc:
        _exit_on(exc)
    _report(outcome, "state changes")


def _describe_history(plan) -> None:
    windows = plan.windows()
    requests = len(windows) * len(plan.chunks())
    click.echo(f"{len(plan.entities)} entities, {plan.since.isoformat()} to "
               f"{plan.until.isoformat()}: {len(windows)} window(s) of {plan.window:g} s, "
               f"{requests} request(s) of up to {plan.per_request} entities")
    shown = ", ".join(plan.entities[:20])
    more = f" and {len(plan.entities) - 20} more" if len(plan.entities) > 20 else ""
    click.echo(f"entities: {shown}{more}" if plan.entities else "entities: none matched")


def _report(outcome, what: str) -> None:
    if outcome.finished:
        click.echo(f"done: {outcome.rows} {what} queued in {outcome.steps - outcome.resumed_at} "
                   f"request(s) (import.db; the writer writes them)")
        sys.exit(EXIT_OK)
    click.echo(f"stopped after step {outcome.done} of {outcome.steps} ({outcome.rows} {what} "
               f"queued); run the same command again to continue")
    sys.exit(EXIT_OK)


@import_group.command("statistics")
@since_option
@until_option
@click.option("--period", type=click.Choice(["5minute", "hour", "day"]), default="hour",
              show_default=True, help="HA's statistics table to read.")
@click.option("--statistic-id", "patterns", multiple=True, metavar="GLOB",
              help="Only these statistics (glob or exact id; repeat). Default: all.")
@click.option("--dry-run", is_flag=True, help="Print what would be read; store nothing.")
@click.pass_obj
def import_statistics(ctx, since: str, until: str | None, period: str,
                      patterns: tuple[str, ...], dry_run: bool) -> None:
    """Long-term statistics (mean/min/max, sum/state) to the schema of docs/import.md."""
    from importer import statistics
    from importer.ha_reader import HAReader
    config, stop = _start(ctx)
    command = {"since": since, "until": until, "period": period, "ids": sorted(patterns)}
    try:
        with HAReader(config.homeassistant, config.imports.request_timeout, stop) as reader:
            plan = statistics.make_plan(config, reader, since, until, period, patterns)
            click.echo(statistics.describe(plan))
            if dry_run:
                click.echo("nothing stored (--dry-run)")
                return
            outcome = statistics.run(config, plan, command, reader, stop, click.echo)
    except IngestorError as exc:
        _exit_on(exc)
    _report(outcome, "statistics rows")


@click.command("verify")
@since_option
@until_option
@entity_option
@click.option("--fill", is_flag=True, help="Queue what is missing (import.db) for the writer.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object for scripts.")
@click.pass_obj
def verify(ctx, since: str, until: str | None, patterns: tuple[str, ...], fill: bool,
           as_json: bool) -> None:
    """Compare, per entity, the state changes HA's recorder holds with the points in InfluxDB.

    Exit 0: nothing missing (or, with --fill, everything missing queued); 5: changes missing
    from InfluxDB; 1-4 as for every command."""
    from importer import verify as check
    from importer.ha_reader import HAReader, Stopped
    config, stop = _start(ctx)
    try:
        with HAReader(config.homeassistant, config.imports.request_timeout, stop) as reader:
            report = check.run(config, reader, since, until, patterns, fill, stop)
    except Stopped as exc:                   # no figures to show: not a verified period
        click.echo(f"{exc}: verify did not finish", err=True)
        sys.exit(EXIT_MISSING)
    except IngestorError as exc:
        _exit_on(exc)
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    else:
        click.echo(report.table())
    sys.exit(report.exit_code())


COMMANDS = (import_group, verify)
__all__ = ["COMMANDS"]
