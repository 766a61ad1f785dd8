"""The ``nats:`` section: a fleet of sites into one central store through NATS JetStream.

A site's writer publishes its points to JetStream instead of writing to InfluxDB
(``nats.publish: true``); central writers (``ha-ingestor write --from-nats``) read the same section
to find the stream and their durable consumer. docs/fleet.md explains every key in context.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from ha_ingestor.config import values as v
from ha_ingestor.config.model import Key, TlsConfig, _between, _duration_min, _named, build_tls
from ha_ingestor.config.model import parse_keys
from ha_ingestor.errors import ConfigError

NATS_SCHEMES = ("nats", "tls")
RETENTIONS = ("workqueue", "limits", "interest")
_STREAM_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_SUBJECT_PREFIX = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_SUBJECT_TOKEN_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class NatsConfig:
    publish: bool
    servers: tuple[str, ...]
    site: str | None
    site_tag: str
    subject_prefix: str
    stream: str
    replicas: int
    retention: str
    max_age: float
    max_bytes: int
    duplicate_window: float
    durable: str
    ack_wait: float
    max_ack_pending: int
    message_points: int
    publish_timeout: float
    connect_timeout: float
    user: str | None
    password: str | None
    token: str | None
    nkey_seed_file: str | None
    creds_file: str | None
    tls: TlsConfig

    @property
    def dead_stream(self) -> str:
        return f"{self.stream}_DEAD"

    @property
    def points_subjects(self) -> str:
        return f"{self.subject_prefix}.points.>"

    @property
    def dead_subjects(self) -> str:
        return f"{self.subject_prefix}.dead.>"

    def points_subject(self, site: str) -> str:
        return f"{self.subject_prefix}.points.{subject_token(site)}"

    def dead_subject(self, site: str) -> str:
        return f"{self.subject_prefix}.dead.{subject_token(site)}"

    def auth_method(self) -> str:
        for name, value in (("creds file", self.creds_file), ("NKey", self.nkey_seed_file),
                            ("token", self.token), ("user and password", self.user)):
            if value:
                return name
        return "no credentials"


def subject_token(site: str) -> str:
    """The site as one subject token: anything but letters, digits, ``_`` and ``-`` becomes
    ``_`` (the ``site`` tag keeps the name as written)."""
    return _SUBJECT_TOKEN_UNSAFE.sub("_", site) or "_"


def _servers(key: str, value: Any) -> tuple[str, ...]:
    servers = v.as_str_list(key, value)
    if not servers:
        raise v.fail(key, "at least one server URL", value)
    for i, url in enumerate(servers):
        parsed = urlparse(url)
        if parsed.scheme not in NATS_SCHEMES or not parsed.hostname:
            raise v.fail(f"{key}[{i}]", "a URL starting with nats:// or tls://", url)
    return servers


def _name(pattern: re.Pattern, expected: str):
    def parse(key: str, value: Any) -> str:
        text = v.as_str(key, value)
        if not pattern.match(text):
            raise v.fail(key, expected, value)
        return text
    return _named("name", parse)


def _limit_size(key: str, value: Any) -> int:
    """A size, or 0 for no limit of the stream's own (the server's limits still apply)."""
    if value in (0, "0"):
        return 0
    return v.as_size(key, value)


NATS_KEYS = [
    Key("publish", v.as_bool, False, "The writer publishes its points to NATS JetStream instead "
        "of writing them to InfluxDB: a site of a fleet (docs/fleet.md)."),
    Key("servers", _servers, ["nats://127.0.0.1:4222"], "NATS server URLs (`nats://` or "
        "`tls://`); any reachable one serves, the others are tried when it fails."),
    Key("site", v.as_opt_str, None, "This site's name: the value of the site tag on every point "
        "and (letters, digits, `_` and `-` kept, anything else as `_`) the last token of its "
        "subject. Default: the Home Assistant instance's name as the HA collector recorded it "
        "(renaming HA then renames the site: set it for production).",
        shown_default="HA's name"),
    Key("site_tag", v.as_str, "site", "Name of the tag that carries the site on every point."),
    Key("subject_prefix", _name(_SUBJECT_PREFIX, "subject tokens of letters, digits, _ and -, "
        "separated by dots"), "ha_ingestor", "Points go to `<prefix>.points.<site>`, dead "
        "letters of the central writers to `<prefix>.dead.<site>`."),
    Key("stream", _name(_STREAM_NAME, "letters, digits, _ and -"), "HA_INGESTOR",
        "JetStream stream of the points; dead letters go to `<stream>_DEAD`."),
    Key("replicas", _between(1, 5), 1, "Stream replicas when the stream is created (3 in a "
        "three-node cluster: one node can fail without losing anything)."),
    Key("retention", _named(" | ".join(RETENTIONS),
                            lambda key, value: v.as_choice(key, value, RETENTIONS)),
        "workqueue", "Stream retention when it is created: `workqueue` deletes a message once "
        "the central writers acked it."),
    Key("max_age", _duration_min(0), "0", "Age after which the stream deletes a message even if "
        "no central writer took it; 0: never (messages leave only when acked)."),
    Key("max_bytes", _named("size", _limit_size), "0", "Stream size limit; when reached, "
        "JetStream refuses new messages and the sites keep them in their queues (never "
        "discards). 0: only the server's own limits."),
    Key("duplicate_window", _duration_min(0.1), "2m", "JetStream drops a message whose "
        "`Nats-Msg-Id` it saw this recently: a site's re-send after a crash is stored once."),
    Key("durable", _name(_STREAM_NAME, "letters, digits, _ and -"), "central", "Durable "
        "consumer every central writer shares; messages are spread over the writers."),
    Key("ack_wait", _duration_min(1), "30s", "A message a central writer took but did not ack "
        "within this time (it died) is delivered to another writer."),
    Key("max_ack_pending", _between(1, 10_000_000), 100_000, "Messages taken and not yet acked, "
        "over all central writers."),
    Key("message_points", _between(1, 100_000), 500, "Points per message at most (a message "
        "also stays below the server's max_payload)."),
    Key("publish_timeout", _duration_min(0.1), "10s", "How long a site waits for JetStream's "
        "acknowledgements of one batch before sending it again."),
    Key("connect_timeout", _duration_min(0.1), "5s", "Timeout of one connection attempt."),
    Key("user", v.as_opt_str, None, "User name (user and password authentication)."),
    Key("password", v.as_opt_str, None, "Password (or `password_file`).", secret=True),
    Key("token", v.as_opt_str, None, "Token authentication (or `token_file`).", secret=True),
    Key("nkey_seed_file", v.as_file, None, "File holding the user's NKey seed (`SU...`), for "
        "NKey authentication."),
    Key("creds_file", v.as_file, None, "A `.creds` file (user JWT and NKey seed), for "
        "decentralized JWT authentication."),
]


def build_nats(raw: Any) -> NatsConfig:
    values = parse_keys("nats", NATS_KEYS, raw, extra=("tls",))
    tls_url = next((url for url in values["servers"] if url.startswith("tls://")), None)
    values["tls"] = build_tls("nats", v.as_mapping("nats", raw).get("tls"),
                              tls_url.replace("tls://", "https://", 1) if tls_url else None)
    config = NatsConfig(**values)
    _check_auth(config)
    return config


def _check_auth(config: NatsConfig) -> None:
    given = [name for name, value in (("nats.user", config.user), ("nats.token", config.token),
                                      ("nats.nkey_seed_file", config.nkey_seed_file),
                                      ("nats.creds_file", config.creds_file)) if value]
    if len(given) > 1:
        raise ConfigError(f"{given[0]} and {given[1]} are both set: NATS takes one way to "
                          f"authenticate (user/password, token, NKey or creds file)")
    if config.password and not config.user:
        raise ConfigError("nats.password is set but nats.user is not")


def check_site(config: NatsConfig, ha_enabled: bool) -> None:
    """A publishing site needs a name: ``nats.site``, or HA's name from the HA collector."""
    if config.publish and not config.site and not ha_enabled:
        raise ConfigError("nats.publish is true, so nats.site is required when "
                          "homeassistant.enabled is false (the site's name defaults to the "
                          "Home Assistant instance's name)")
