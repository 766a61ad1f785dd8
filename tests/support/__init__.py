"""Helpers that start real servers (Mosquitto, InfluxDB, VictoriaMetrics, Home Assistant) and the
project's own Home Assistant test server, for the tests, the benchmarks and ``make demo``."""
