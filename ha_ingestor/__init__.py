"""HA Ingestor: Home Assistant's MQTT broker and WebSocket event bus into InfluxDB, losing nothing.

The shared core: config, event envelope, durable queue, CLI, metrics and process lifecycle.
Collectors (``collectors``) and the writer (``writer``) import only this package, never each other.
"""

__version__ = "0.1.0"
