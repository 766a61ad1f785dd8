"""The Home Assistant WebSocket collector: every event on HA's event bus into ``<queue.dir>/ha.db``,
gap-free across reconnects (backfill from HA's recorder, then a ``get_states`` resync).

Entry point: ``run(config, stop) -> int`` (``ha-ingestor collect ha``). See docs/homeassistant.md.
"""

from __future__ import annotations

import gc

from ha_ingestor import metrics
from ha_ingestor.config import Config
from ha_ingestor.errors import EXIT_OK
from ha_ingestor.lifecycle import StopFlag


def run(config: Config, stop: StopFlag) -> int:
    """Collect until ``stop`` is set. Raises AuthError (token refused, or not an admin's),
    ConfigError or QueueError; the CLI turns them into exit codes 3, 2 and 4."""
    from collectors.homeassistant.collector import HACollector

    # Parsed HA events are acyclic dicts, freed by reference counting. With CPython's default
    # thresholds (700, 10, 10) a burst (~40 containers per event) triggers collections all the
    # time, and each full one walks every event still held in memory. Fewer collections doubled
    # the sustained commit rate in bench/ha_bench.py.
    gc.set_threshold(50_000, 20, 100)
    collector = HACollector(config, stop)
    if config.metrics.enabled:
        metrics.serve(config.metrics.host, config.metrics.ports["ha"], ready=collector.ready)
    collector.run()
    return EXIT_OK
