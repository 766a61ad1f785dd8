"""MQTT collector: every message on the broker into ``<queue.dir>/mqtt.db``, at least once.

A persistent session (MQTT 3.1.1 or 5) with manual acknowledgement: a QoS 1 message is
acknowledged to the broker only after the batch holding it is committed to the durable queue.
"""

from collectors.mqtt.collector import run

__all__ = ["run"]
