"""Shared fixtures. Each real server has its own plugin module under tests/support/."""

pytest_plugins = [
    "tests.support.fixtures_mosquitto",
    "tests.support.fixtures_influx",
    "tests.support.fixtures_homeassistant",
    "tests.support.fixtures_ingestor",
    "tests.support.fixtures_nats",
]
