"""Fleets: many sites into one central store through NATS JetStream (docs/fleet.md).

- ``sink``: a site's writer publishes its points to JetStream (``nats.publish: true``);
- ``central``: central writers consume them into InfluxDB (``ha-ingestor write --from-nats``);
- ``stream``: the streams and the durable consumer (``ha-ingestor nats init``);
- ``dead``: the central writers' dead letters;
- ``link``: the one NATS connection each process holds, and its error classification.
"""

from __future__ import annotations

import logging

from ha_ingestor.envelope import HA, HA_NAME_META_KEY
from ha_ingestor.errors import QueueError
from ha_ingestor.queue import read_meta

log = logging.getLogger("writer")

SITE_POLL_S = 1.0


def site_name(config, stop) -> str | None:
    """``nats.site``, else the Home Assistant instance's name as the HA collector recorded it
    (waited for: the first points must already carry the final name). None when stopped first."""
    if config.nats.site:
        return config.nats.site
    logged = False
    while not stop.is_set():
        try:
            name = read_meta(config.queue.dir, HA, HA_NAME_META_KEY)
        except QueueError as exc:
            name = None
            log.warning("cannot read Home Assistant's name from the queue: %s", exc)
        if name:
            log.info("site name: %r (Home Assistant's name; set nats.site to choose it)", name)
            return name
        if not logged:
            log.info("waiting for the HA collector to record Home Assistant's name, the site's "
                     "name (set nats.site to name the site yourself)")
            logged = True
        stop.wait(SITE_POLL_S)
    return None
