"""The fleet run: many sites → a three-node JetStream cluster → central writers → InfluxDB, with
faults (``make fleet`` for the full run; tests/test_fleet_faults.py runs the short one)."""
