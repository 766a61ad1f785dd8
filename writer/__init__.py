"""The writer: durable queue files → InfluxDB (v1 or v2 write API), HA-compatible schema.

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
    from writer.sinks import open_sink

    influx = config.influxdb
    sink = open_sink(influx)
    loop = WriterLoop(config.queue.dir, sink, Converter(config.schema), stop,
                      batch_size=influx.batch_size, flush_interval=influx.flush_interval,
                      converter_process={"yes": True, "no": False}.get(influx.converter_process),
                      move_aside_after=config.queue.move_aside_after)
    if config.metrics.enabled:
        metrics.serve(config.metrics.host, config.metrics.ports["writer"], ready=loop.ready)
    target = influx.bucket if influx.api == "v2" else influx.database
    log.info("writer started: queue %s → %s (%s API, %s), batch %d points, flush %.2g s",
             config.queue.dir, influx.url, influx.api, target, influx.batch_size,
             influx.flush_interval)
    loop.run()
    log.info("writer stopped")
    return EXIT_OK
