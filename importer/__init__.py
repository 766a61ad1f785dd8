"""Bringing the past in: HA's recorded state history and long-term statistics into the import
queue (``<queue.dir>/import.db``), and the check that InfluxDB holds every recorded change.

- ``importer.ha_reader``: requests to HA over the HA collector's connection code (same URL,
  token, TLS and error handling), reconnecting with the shared backoff.
- ``importer.plan``: times as given on the command line, windows, entity selection.
- ``importer.job``: an import as a resumable job, its checkpoint in the queue's meta.
- ``importer.history``: ``ha-ingestor import history``.
- ``importer.statistics``: ``ha-ingestor import statistics``.
- ``importer.verify``: ``ha-ingestor verify [--fill]``.
- ``importer.influx_read``: the few InfluxDB queries ``verify`` needs.
- ``importer.progress``: a progress bar on a terminal, a progress line otherwise.

See docs/import.md.
"""
