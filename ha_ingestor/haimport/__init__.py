"""``ha-ingestor config import-ha PATH/configuration.yaml``: Home Assistant's ``influxdb:`` block
as an HA Ingestor config.

Read as HA reads it (includes, ``!secret``, ``!env_var``, packages: ``hayaml``, ``packages``),
validated as HA validates it (``haschema``), mapped option by option (``mapping``). Secrets are
printed as ``${VAR}`` (or ``*_file``) references, never their values; what has no equivalent is
listed in the header. With the printed variables set, the result passes ``config check`` and
writes the points HA's integration wrote for the same state changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import yaml

from ha_ingestor.errors import ConfigError
from ha_ingestor.haimport import haschema, hayaml, mapping, packages

__all__ = ["import_ha"]


def import_ha(path: Path | str, env: Mapping[str, str], files: bool = False) -> str:
    """The HA Ingestor config (YAML text with a commented header). Raises ConfigError."""
    config = hayaml.load_configuration(path, env)
    notes = packages.merge_influxdb(config)
    if haschema.DOMAIN not in config:
        raise ConfigError(f"{str(path)!r} has no influxdb: block (nor do its packages): "
                          f"nothing to import")
    raw = config[haschema.DOMAIN]
    options = haschema.validate(raw)
    mapped = mapping.map_options(options, raw, files)
    mapped.notes[:0] = notes
    return render(Path(path), _ha_url(config), mapped)


def _ha_url(config: dict) -> str:
    http = hayaml.plain(config.get("http")) if isinstance(config.get("http"), dict) else {}
    port = http.get("server_port", 8123)
    scheme = "wss" if http.get("ssl_certificate") else "ws"
    return f"{scheme}://127.0.0.1:{port}/api/websocket"


def render(source: Path, ha_url: str, mapped: mapping.Mapped) -> str:
    variables = {"HA_TOKEN": "a long-lived access token of a Home Assistant administrator "
                             "(HA: your profile → Security → Long-lived access tokens)",
                 **mapped.variables}
    lines = [f"# HA Ingestor configuration, imported from {source} by "
             f"`ha-ingestor config import-ha`.",
             "# Set these before `ha-ingestor config check` (their values are not copied here):"]
    lines += [f"#   {name}: {what}" for name, what in variables.items()]
    if mapped.no_equivalent:
        lines.append("# No equivalent in HA Ingestor:")
        lines += [f"#   {item}" for item in mapped.no_equivalent]
    if mapped.notes:
        lines.append("# Notes:")
        lines += [f"#   {note}" for note in mapped.notes]
    lines += ["", "# The Home Assistant WebSocket API (every event, not only state changes).",
              _dump({"homeassistant": {"url": ha_url, "token": "${HA_TOKEN}"}}),
              "# Your MQTT broker (HA OS: a login of the Mosquitto add-on; set username and "
              "password_file). enabled: false to skip MQTT.",
              _dump({"mqtt": {"enabled": True, "host": "127.0.0.1", "port": 1883}}),
              "# From Home Assistant's influxdb: block.",
              _dump({"influxdb": mapped.influxdb}),
              "# state_changed: Home Assistant's own options, same names and meaning. events: "
              "HA's integration wrote state changes only;",
              "# other event types go to the measurement ha_events, which it never wrote "
              "(enabled: false for exactly its points).",
              _dump({"schema": {"state_changed": mapped.state_changed,
                                "events": {"enabled": True}}})]
    return "\n".join(lines)


def _dump(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip("\n")
