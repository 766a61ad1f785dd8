"""Collectors: each reads one source and appends its raw events to the durable queue.

Every collector exposes ``run(config, stop) -> int`` and imports only ``ha_ingestor``.
"""
