"""End-to-end chaos harness: the whole pipeline (``ha-ingestor run``) against a real Home Assistant,
Mosquitto and InfluxDB, a steady load, faults scheduled from a seed, and a ground-truth ledger
compared point by point with what landed in InfluxDB.

Run it with ``python -m tests.chaos --profile short|full --seed N``; ``make chaos`` runs the full
profile. HA's own ``influxdb:`` integration writes the same events to a second database of the same
InfluxDB, so every report carries its column too.
"""
