"""``ha-ingestor config check --connect``: try the broker, Home Assistant and InfluxDB with the
configured credentials, each the way its component connects (the component's own
``check_connection(config)``), and report each.

Exit code: 3 when anything refused the credentials or permission or lacks the database/bucket
(fix the config), else 1 when something could not be reached (an outage: retrying may help),
else 0.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from ha_ingestor.errors import EXIT_AUTH, EXIT_FAILURE, EXIT_OK, AuthError, IngestorError

CHECKS = (("mqtt", "collectors.mqtt.check"), ("homeassistant", "collectors.homeassistant.check"),
          ("influxdb", "writer.check"))


@dataclass(frozen=True)
class Outcome:
    target: str      # mqtt, homeassistant or influxdb
    code: int        # EXIT_OK, EXIT_AUTH, EXIT_FAILURE (or the error's own exit code)
    message: str

    @property
    def label(self) -> str:
        return {EXIT_OK: "OK", EXIT_AUTH: "REFUSED"}.get(self.code, "FAILED")


def targets(config) -> list[str]:
    """What the configuration uses: the enabled collectors' sources and InfluxDB."""
    wanted = {"mqtt": config.mqtt.enabled, "homeassistant": config.homeassistant.enabled,
              "influxdb": True}
    return [name for name, _module in CHECKS if wanted[name]]


def check(config, target: str) -> Outcome:
    module = importlib.import_module(dict(CHECKS)[target])
    try:
        return Outcome(target, EXIT_OK, module.check_connection(config))
    except AuthError as exc:
        return Outcome(target, EXIT_AUTH, str(exc))
    except IngestorError as exc:
        return Outcome(target, exc.exit_code, str(exc))
    except Exception as exc:  # any library surprise is reported for this target, not a crash
        return Outcome(target, EXIT_FAILURE, f"unexpected error: {type(exc).__name__}: {exc}")


def exit_code(outcomes: list[Outcome]) -> int:
    codes = {o.code for o in outcomes}
    if EXIT_AUTH in codes:
        return EXIT_AUTH
    return max(codes - {EXIT_OK}, default=EXIT_OK)
