"""The typed, frozen configuration and the table of every key it accepts.

Each section is declared once as a list of ``Key`` rows (name, parser, default, description); the
same rows build the frozen objects, reject unknown keys, redact secrets for ``config show`` and
render docs/configuration.md, so the reference cannot drift from the code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from ha_ingestor import topicfilter
from ha_ingestor.config import values as v
from ha_ingestor.errors import ConfigError

COMPONENTS = ("mqtt", "ha", "writer")
MIN_QUEUE_BYTES = 2 * 2**20      # the write-ahead log alone is counted at 1 MiB (ha_ingestor/queue)


@dataclass(frozen=True)
class Key:
    name: str
    parse: Callable[[str, Any], Any]
    default: Any
    doc: str
    secret: bool = False
    shown_default: str | None = None     # how the default reads in the reference, when not literal


@dataclass(frozen=True)
class TlsConfig:
    enabled: bool
    ca_file: str | None
    cert_file: str | None
    key_file: str | None
    verify: bool


@dataclass(frozen=True)
class QueueConfig:
    dir: Path
    max_bytes: int
    batch_events: int
    batch_interval: float
    move_aside_after: int


@dataclass(frozen=True)
class MqttConfig:
    enabled: bool
    host: str
    port: int
    client_id: str
    protocol: str
    session_expiry: float
    keepalive: float
    topics: tuple[str, ...]
    exclude_topics: tuple[str, ...]
    qos: int
    username: str | None
    password: str | None
    max_payload_bytes: int
    tls: TlsConfig


@dataclass(frozen=True)
class HomeAssistantConfig:
    enabled: bool
    url: str
    token: str | None
    event_types: tuple[str, ...]
    connect_timeout: float
    ping_interval: float
    ping_timeout: float
    backfill: bool
    backfill_margin: float
    handoff_max_events: int
    full_policy: str
    tls: TlsConfig


@dataclass(frozen=True)
class InfluxConfig:
    api: str
    url: str
    database: str
    retention_policy: str | None
    username: str | None
    password: str | None
    org: str | None
    bucket: str | None
    token: str | None
    batch_size: int
    flush_interval: float
    timeout: float
    gzip: bool
    converter_process: str
    tls: TlsConfig


@dataclass(frozen=True)
class MetricsInfluxConfig:
    enabled: bool
    interval: float
    url: str | None
    database: str | None
    bucket: str | None
    timeout: float


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool
    host: str
    ports: dict = field(hash=False)
    influxdb: MetricsInfluxConfig | None = None


@dataclass(frozen=True)
class RunConfig:
    shutdown_timeout: float
    restart_backoff_max: float
    stall_timeout: float


@dataclass(frozen=True)
class ImportConfig:
    window: float
    entities_per_request: int
    statistics_window: float
    statistic_ids_per_request: int
    request_timeout: float


@dataclass(frozen=True)
class Config:
    queue: QueueConfig
    mqtt: MqttConfig
    homeassistant: HomeAssistantConfig
    influxdb: InfluxConfig
    schema: Any
    metrics: MetricsConfig
    run: RunConfig
    imports: ImportConfig | None = None   # the ``import:`` section (a Python keyword)
    nats: Any = None                   # fleet.NatsConfig (the nats: section)
    source: str | None = None          # the file it was loaded from

    def enabled_components(self) -> list[str]:
        return [name for name, on in (("mqtt", self.mqtt.enabled),
                                      ("ha", self.homeassistant.enabled), ("writer", True)) if on]


# ---- key tables -----------------------------------------------------------------------------

def _named(kind: str, parse: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    parse.__name__ = kind          # what the configuration reference shows as the type
    return parse


def _ge(minimum):
    return _named(f"integer >= {minimum}", lambda key, value: v.as_int(key, value, minimum))


def _between(lo, hi):
    return _named(f"integer {lo}..{hi}", lambda key, value: v.as_int(key, value, lo, hi))


def _choice(*choices):
    return _named(" | ".join(choices), lambda key, value: v.as_choice(key, value, choices))


def qos(key, value):
    if isinstance(value, bool) or value not in (0, 1, 2, "0", "1", "2"):
        raise ConfigError(f"{key} must be 0, 1 or 2, got {value!r}")
    return int(value)


def _url(*schemes):
    def url(key, value):
        text = v.as_str(key, value)
        parsed = urlparse(text)
        if parsed.username is not None or parsed.password is not None:
            raise ConfigError(f"{key} must not hold credentials ({redact_url(text)}): they "
                              f"would be shown and logged; use the section's username/password "
                              f"or token keys")
        if parsed.scheme not in schemes or not parsed.hostname:
            raise v.fail(key, f"a URL starting with {' or '.join(s + '://' for s in schemes)}",
                         value)
        return text.rstrip("/") if parsed.scheme.startswith("http") else text
    return url


def redact_url(url: str) -> str:
    """``http://user:pw@host/x`` → ``http://***@host/x``."""
    parsed = urlparse(url)
    if parsed.username is None and parsed.password is None:
        return url
    return parsed._replace(netloc="***@" + parsed.netloc.rsplit("@", 1)[1]).geturl()


def _topic_filters(key, value):
    filters = v.as_str_list(key, value)
    for i, topic_filter in enumerate(filters):
        try:
            topicfilter.validate(topic_filter)
        except topicfilter.FilterError as exc:
            raise ConfigError(f"{key}[{i}]: {exc}") from None
    return filters


def _event_types(key, value):
    """HA fires ``state_reported`` (a state written again unchanged, since HA 2024.4) only to its
    own listeners that bring a filter: HA 2025.4.4 refuses a WebSocket subscription to it
    (``home_assistant_error``), and 2024.3.3 never fires it."""
    types = v.as_str_list(key, value)
    if "state_reported" in types:
        raise ConfigError(f"{key}: 'state_reported' cannot be subscribed over Home Assistant's "
                          f"WebSocket API (HA fires it only to its own filtered listeners); "
                          f"a state written again unchanged reaches no client")
    return types


_secret = _named("secret", v.as_secret)


def _duration_min(minimum):
    return _named("duration", lambda key, value: v.as_duration(key, value, minimum))


TLS_KEYS = [
    Key("enabled", v.as_bool, False,
        "Use TLS (implied by an https://, wss:// or, for NATS, tls:// URL)."),
    Key("ca_file", v.as_file, None, "CA certificate file (PEM) to verify the server."),
    Key("cert_file", v.as_file, None, "Client certificate file (PEM), for mutual TLS."),
    Key("key_file", v.as_file, None, "Client private key file (PEM), for mutual TLS."),
    Key("verify", v.as_bool, True, "Verify the server certificate and host name."),
]

QUEUE_KEYS = [
    Key("dir", v.as_path, "./data/queue", "Directory of the queue files (mqtt.db, ha.db, import.db)."),
    Key("max_bytes", _named("size", lambda key, value: v.as_size(key, value, MIN_QUEUE_BYTES)),
        "2GiB", "Largest size of one queue file. When full the MQTT "
        "collector stops reading (the broker keeps the messages); the HA collector drops by "
        "homeassistant.full_policy and counts every drop."),
    Key("batch_events", _between(1, 100_000), 1000,
        "Collectors commit a batch after this many events..."),
    Key("batch_interval", _duration_min(0.001), "50ms",
        "...or this long after the batch's first event, whichever comes first."),
    Key("move_aside_after", _between(1, 1000), 3, "The writer moves a queue item to the "
        "dead-letter store (logged as an error) once the writer process (or its converter "
        "process) died this many times in a row while converting that item, so one item can never hold up the queue. "
        "`ha-ingestor queue dead-letter-item` does the same by hand."),
]

MQTT_KEYS = [
    Key("enabled", v.as_bool, True, "Run the MQTT collector (`ha-ingestor run`)."),
    Key("host", v.as_str, "127.0.0.1", "Broker host name or address."),
    Key("port", v.as_port, 1883, "Broker port (8883 is usual with TLS)."),
    Key("client_id", v.as_str, "ha-ingestor", "Fixed client id: the broker keeps this "
        "client's persistent session (and its queued messages) under it."),
    Key("protocol", _choice("3.1.1", "5"), "3.1.1", "MQTT protocol version."),
    Key("session_expiry", _duration_min(0), "7d", "MQTT 5 session expiry interval: how long "
        "the broker keeps the session while the collector is away."),
    Key("keepalive", _duration_min(1), "30s", "MQTT keepalive interval."),
    Key("topics", _named("topic filters", _topic_filters), ["#"],
        "Topic filters to subscribe to (at least one)."),
    Key("exclude_topics", _named("topic filters", _topic_filters), [],
        "Topic filters whose messages are not stored."),
    Key("qos", qos, 1, "Subscription QoS (0, 1 or 2). With 1 or 2 a message is acknowledged "
        "to the broker only after it is committed to the queue."),
    Key("username", v.as_opt_str, None, "Broker user name."),
    Key("password", _secret, None, "Broker password (or `password_file`).",
        secret=True),
    Key("max_payload_bytes", v.as_size, "1MiB", "Larger messages are kept as dead letters "
        "instead of being queued."),
]

HA_KEYS = [
    Key("enabled", v.as_bool, True, "Run the Home Assistant collector (`ha-ingestor run`)."),
    Key("url", _url("ws", "wss"), "ws://127.0.0.1:8123/api/websocket",
        "Home Assistant WebSocket API URL."),
    Key("token", _secret, None, "Long-lived access token of an administrator "
        "(or `token_file`).", secret=True),
    Key("event_types", _event_types, [], "Event types to subscribe to; empty means all "
        "(`state_reported` cannot be subscribed over HA's WebSocket API)."),
    Key("connect_timeout", _duration_min(0.1), "10s", "Timeout of one connection attempt."),
    Key("ping_interval", _duration_min(1), "10s", "Interval of WebSocket pings."),
    Key("ping_timeout", _duration_min(1), "10s", "A missing pong after this long means HA is "
        "frozen: reconnect."),
    Key("backfill", v.as_bool, True, "After each reconnect, read the state changes missed while "
        "away from HA's recorder."),
    Key("backfill_margin", _duration_min(0), "10s", "Start the backfill this long before the "
        "newest committed event, run a second backfill pass this long after subscribing, and "
        "wait this long after a drop before restoring it (all cover the recorder's commit "
        "interval)."),
    Key("handoff_max_events", _ge(1000), 10000, "Events held in memory between the socket "
        "reader and the committer (about 5 kB each while the queue is full; HA itself cuts off "
        "a client with 4 096 pending messages, so more only helps through a full queue)."),
    Key("full_policy", _choice("drop_newest", "drop_oldest"), "drop_newest", "Which live "
        "events to drop when the queue is full (HA cannot be paused); every drop is counted, and "
        "dropped state changes are restored from HA's recorder once the queue has room."),
]

INFLUX_KEYS = [
    Key("api", _choice("v1", "v2"), "v1", "`v1`: POST /write (InfluxDB 1.x). `v2`: "
        "/api/v2/write (InfluxDB 2.x, 3.x, 1.8+, VictoriaMetrics)."),
    Key("url", _url("http", "https"), "http://127.0.0.1:8086", "InfluxDB base URL."),
    Key("database", v.as_str, "home_assistant", "v1: database name."),
    Key("retention_policy", v.as_opt_str, None, "v1: retention policy (default: the "
        "database's default)."),
    Key("username", v.as_opt_str, None, "v1: user name."),
    Key("password", _secret, None, "v1: password (or `password_file`).",
        secret=True),
    Key("org", v.as_opt_str, None, "v2: organization."),
    Key("bucket", v.as_opt_str, None, "v2: bucket."),
    Key("token", _secret, None, "v2: API token (or `token_file`).", secret=True),
    Key("batch_size", _between(1, 1_000_000), 5000, "Points per write request."),
    Key("flush_interval", _duration_min(0.001), "1s", "Write a partial batch after this long."),
    Key("timeout", _duration_min(0.1), "10s", "Timeout of one write request."),
    Key("gzip", v.as_bool, True, "Compress write requests."),
    Key("converter_process", _choice("auto", "yes", "no"), "no", "Convert events to "
        "line protocol in a process of its own beside the writer (`yes`; about 40 MB more "
        "memory). On two cores shared with InfluxDB it drained no faster than converting in the "
        "writer itself (docs/benchmarks.md), so it is off by default; it can help where InfluxDB "
        "runs elsewhere and the writer has two CPUs. `auto`: when the writer may run on more "
        "than one CPU."),
]

METRICS_KEYS = [
    Key("enabled", v.as_bool, True, "Serve /metrics, /healthz and /readyz in every process."),
    Key("host", v.as_str, "127.0.0.1", "Address the endpoints bind to."),
]
METRICS_PORTS = {"run": 9100, "mqtt": 9101, "ha": 9102, "writer": 9103, "central": 9104}
METRICS_INFLUX_KEYS = [
    Key("enabled", v.as_bool, False, "Write every process's own counters and gauges to "
        "InfluxDB, like Telegraf's `inputs.internal` (`metrics.influxdb: true` is short for "
        "this). Never delays the events: a snapshot that cannot be written is dropped and "
        "counted."),
    Key("interval", _duration_min(1), "10s", "How often each process writes a snapshot."),
    Key("url", _url("http", "https"), None, "InfluxDB to write them to (default: "
        "`influxdb.url`; the credentials and TLS settings of `influxdb:` are used)."),
    Key("database", v.as_opt_str, None, "v1: database (default: `influxdb.database`)."),
    Key("bucket", v.as_opt_str, None, "v2: bucket (default: `influxdb.bucket`)."),
    Key("timeout", _duration_min(0.1), "2s", "Timeout of one snapshot's write request."),
]

RUN_KEYS = [
    Key("shutdown_timeout", _duration_min(1), "30s", "`ha-ingestor run`: how long collectors "
        "and then the writer get to stop before they are killed."),
    Key("restart_backoff_max", _duration_min(1), "60s", "Longest wait before restarting a "
        "crashed child."),
    Key("stall_timeout", _duration_min(1), "60s", "A process whose main loop has not made "
        "progress for this long answers `/healthz` with 503, and `ha-ingestor run` kills and "
        "restarts it (a child stopped with SIGSTOP, or stuck)."),
]

IMPORT_KEYS = [
    Key("window", _duration_min(1), "1h", "`import history` and `verify` read HA's recorder in "
        "windows of this length (with `entities_per_request`, what one request reads)."),
    Key("entities_per_request", _between(1, 10_000), 25, "Entities in one "
        "`history/history_during_period` request; with `window`, this sizes each answer so HA "
        "stays responsive."),
    Key("statistics_window", _duration_min(60), "30d", "`import statistics` reads this much "
        "time per request."),
    Key("statistic_ids_per_request", _between(1, 10_000), 20, "Statistics in one "
        "`recorder/statistics_during_period` request."),
    Key("request_timeout", _duration_min(1), "300s", "How long one answer from HA may take "
        "before the request is retried."),
]

SECTIONS: dict[str, list[Key]] = {
    "queue": QUEUE_KEYS, "mqtt": MQTT_KEYS, "homeassistant": HA_KEYS, "influxdb": INFLUX_KEYS,
    "metrics": METRICS_KEYS, "run": RUN_KEYS, "import": IMPORT_KEYS,
}
TLS_SECTIONS = ("mqtt", "homeassistant", "influxdb")
KNOWN_SECTIONS = tuple(SECTIONS) + ("schema",)


# ---- building -------------------------------------------------------------------------------

def parse_keys(section: str, keys: list[Key], raw: Any, extra: tuple[str, ...] = ()) -> dict:
    """Validate ``raw`` (a mapping) against ``keys``; unknown names are an error."""
    raw = v.as_mapping(section, raw)
    known = {k.name for k in keys} | set(extra)
    for name in raw:
        if name not in known:
            raise ConfigError(f"{section}.{name} is not a known key "
                              f"(known: {', '.join(sorted(known))})")
    return {k.name: _parse_one(f"{section}.{k.name}", k, raw.get(k.name, k.default))
            for k in keys}


def _parse_one(dotted: str, key: Key, value: Any) -> Any:
    if value is None:
        if key.default is not None:
            raise ConfigError(f"{dotted} must be set (default {key.default!r}), got null")
        return None
    return key.parse(dotted, value)


def build_tls(section: str, raw: Any, url: str | None = None) -> TlsConfig:
    values = parse_keys(f"{section}.tls", TLS_KEYS, raw)
    scheme = urlparse(url).scheme if url else None
    if scheme in ("http", "ws"):
        _refuse_tls_without_tls_url(section, url, raw, values)
    if scheme in ("https", "wss"):
        values["enabled"] = True
    if values["ca_file"] or values["cert_file"]:
        values["enabled"] = True
    if bool(values["cert_file"]) != bool(values["key_file"]):
        raise ConfigError(f"{section}.tls.cert_file and {section}.tls.key_file must be given "
                          f"together")
    return TlsConfig(**values)


def _refuse_tls_without_tls_url(section: str, url: str, raw: Any, values: dict) -> None:
    """``tls`` settings beside an ``http://`` or ``ws://`` URL would be ignored: the connection
    is plain text. Refused, so nobody believes it is encrypted."""
    given = [name for name in v.as_mapping(f"{section}.tls", raw)
             if values[name] != next(k.default for k in TLS_KEYS if k.name == name)]
    if given:
        secure = "wss://" if url.startswith("ws") else "https://"
        raise ConfigError(f"{section}.tls.{given[0]} is set but {section}.url is "
                          f"{url.split('://')[0]}:// (no TLS): use a {secure} URL, or remove "
                          f"{section}.tls")


def build_metrics(raw: Any) -> MetricsConfig:
    values = parse_keys("metrics", METRICS_KEYS, raw, extra=("ports", "influxdb"))
    influx_raw = v.as_mapping("metrics", raw).get("influxdb")
    if influx_raw is not None and not isinstance(v.structured("metrics.influxdb", influx_raw),
                                                 dict):
        influx_raw = {"enabled": influx_raw}         # metrics.influxdb: true
    values["influxdb"] = MetricsInfluxConfig(**parse_keys("metrics.influxdb",
                                                          METRICS_INFLUX_KEYS, influx_raw))
    ports_raw = v.as_mapping("metrics.ports", v.as_mapping("metrics", raw).get("ports"))
    ports = dict(METRICS_PORTS)
    for name, port in ports_raw.items():
        if name not in METRICS_PORTS:
            raise ConfigError(f"metrics.ports.{name} is not a known component "
                              f"(known: {', '.join(METRICS_PORTS)})")
        ports[name] = v.as_port(f"metrics.ports.{name}", port, allow_zero=True)
    return MetricsConfig(ports=ports, **values)


def build_section(name: str, raw: Any):
    keys, cls = {"queue": (QUEUE_KEYS, QueueConfig), "mqtt": (MQTT_KEYS, MqttConfig),
                 "homeassistant": (HA_KEYS, HomeAssistantConfig),
                 "influxdb": (INFLUX_KEYS, InfluxConfig), "run": (RUN_KEYS, RunConfig),
                 "import": (IMPORT_KEYS, ImportConfig)}[name]
    extra = ("tls",) if name in TLS_SECTIONS else ()
    values = parse_keys(name, keys, raw, extra)
    if name in TLS_SECTIONS:
        values["tls"] = build_tls(name, v.as_mapping(name, raw).get("tls"), values.get("url"))
    return cls(**values)


def check_consistency(config: Config) -> None:
    """Rules that span keys."""
    ha, influx = config.homeassistant, config.influxdb
    if ha.enabled and not ha.token:
        raise ConfigError("homeassistant.token is required when homeassistant.enabled is true "
                          "(a long-lived access token; or set homeassistant.token_file)")
    if influx.api == "v2":
        missing = [k for k in ("org", "bucket", "token") if not getattr(influx, k)]
        if missing:
            raise ConfigError(f"influxdb.api is v2, so influxdb.{missing[0]} is required "
                              f"(v2 needs org, bucket and token)")
    if not config.mqtt.topics:
        raise ConfigError("mqtt.topics must list at least one topic filter")
    if bool(config.mqtt.username) != bool(config.mqtt.password) and config.mqtt.password:
        raise ConfigError("mqtt.password is set but mqtt.username is not")
