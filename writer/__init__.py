"""The writer: durable queue files → InfluxDB (v1 or v2 write API), HA-compatible schema; or, at a
site of a fleet (``nats.publish: true``), → NATS JetStream (``writer/fleet/``).

Entry point for the CLI (``ha-ingestor write``): ``run(config, stop) -> exit code``.
"""

from __future__ import annotations

import logging

from ha_ingestor import metrics
from ha_ingestor.errors import EXIT_OK

log = logging.getLogger("writer")


def run(config, stop) -> int:
    """Write until ``stop`` is set; the batch in hand is finished first. Returns EXIT_OK."""
    from writer.convert import Converter
    from writer.loop import WriterLoop

    influx = config.influxdb
    claims = _claim_queues(config.queue.dir)   # held while a site waits for its name too
    try:
        opened = _open_output(config, stop)
        if opened is None:
            return EXIT_OK              # stopped before the site's name was known
        sink, target, where = opened
        loop = WriterLoop(config.queue.dir, sink, Converter(config.schema), stop,
                          batch_size=influx.batch_size, flush_interval=influx.flush_interval,
                          converter_process={"yes": True, "no": False}.get(
                              influx.converter_process),
                          move_aside_after=config.queue.move_aside_after, target=target)
    finally:
        for claim in claims:            # the loop holds them now (counted per process)
            claim.release()
    if config.metrics.enabled:
        metrics.serve(config.metrics.host, config.metrics.ports["writer"], ready=loop.ready)
    log.info("writer started: queue %s → %s, batch %d points, flush %.2g s",
             config.queue.dir, where, influx.batch_size, influx.flush_interval)
    loop.run()
    log.info("writer stopped")
    return EXIT_OK


def _claim_queues(queue_dir) -> list:
    """The writer's role on every queue file: a second writer exits 4 at once."""
    from ha_ingestor.envelope import QUEUES
    from ha_ingestor.queue import CONSUMER, hold_role
    return [hold_role(queue_dir, source, CONSUMER, "the writer") for source in QUEUES]


def _open_output(config, stop):
    """(sink, target name, description) for the configured output; None if stopped first."""
    if config.nats.publish:
        from writer.fleet import site_name
        from writer.fleet.sink import NatsSink
        site = site_name(config, stop)
        if site is None:
            return None
        sink = NatsSink(config.nats, site)
        return sink, "NATS JetStream", (f"NATS {sink.url}, subject {sink.subject} "
                                        f"({config.nats.site_tag}={site!r})")
    from writer.sinks import open_sink
    influx = config.influxdb
    target = influx.bucket if influx.api == "v2" else influx.database
    return open_sink(influx), "InfluxDB", f"{influx.url} ({influx.api} API, {target})"
