"""The JetStream side of a fleet: the points stream, the dead-letter stream and the central
writers' durable consumer, made from the ``nats:`` section.

``ha-ingestor nats init`` and every central writer at start call ``ensure``: what is missing is
created; what exists (made by an earlier run or by an operator with the ``nats`` tool) is left as
it is, and the ways it differs from the configuration are reported (``nats init --update``
applies the configuration where JetStream allows it). A stream that does not capture the points'
subjects is an error: the sites' messages would go nowhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import nats.js.errors
from nats.js.api import (AckPolicy, ConsumerConfig, DeliverPolicy, DiscardPolicy,
                         RetentionPolicy, StorageType, StreamConfig)

from ha_ingestor.config.fleet import NatsConfig
from ha_ingestor.errors import ConfigError

STREAM_EXISTS = 10058               # JetStream: stream name already in use


@dataclass
class SetupReport:
    """What ``ensure`` found and did, for ``nats init`` and the central writers' log."""

    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"created {what}" for what in self.created]
        out += [f"found {what}" for what in self.existing]
        out += [f"updated {what}" for what in self.updated]
        out += [f"differs from the config: {what}" for what in self.differences]
        return out


def points_stream_config(config: NatsConfig) -> StreamConfig:
    return StreamConfig(
        name=config.stream, subjects=[config.points_subjects],
        description="HA Ingestor: points of every site (line protocol)",
        retention=RetentionPolicy(config.retention), discard=DiscardPolicy.NEW,
        max_age=config.max_age or None, max_bytes=config.max_bytes or -1,
        duplicate_window=config.duplicate_window, num_replicas=config.replicas,
        storage=StorageType.FILE)


def dead_stream_config(config: NatsConfig) -> StreamConfig:
    return StreamConfig(
        name=config.dead_stream, subjects=[config.dead_subjects],
        description="HA Ingestor: points InfluxDB rejected, with the reason",
        retention=RetentionPolicy.LIMITS, discard=DiscardPolicy.NEW,
        duplicate_window=config.duplicate_window, num_replicas=config.replicas,
        storage=StorageType.FILE)


def consumer_config(config: NatsConfig) -> ConsumerConfig:
    return ConsumerConfig(
        name=config.durable, durable_name=config.durable,
        description="HA Ingestor central writers", filter_subject=config.points_subjects,
        deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.EXPLICIT,
        ack_wait=config.ack_wait, max_deliver=-1, max_ack_pending=config.max_ack_pending,
        max_waiting=512)


async def ensure(js, config: NatsConfig, update: bool = False,
                 consumer: bool = True) -> SetupReport:
    """Create what is missing; report (or, with ``update``, apply) the differences."""
    report = SetupReport()
    for wanted, probe in ((points_stream_config(config), config.points_subject("probe")),
                          (dead_stream_config(config), config.dead_subject("probe"))):
        await _check_capture(js, probe, wanted, missing_ok=True)
        await _ensure_stream(js, wanted, report, update)
        await _check_capture(js, probe, wanted, missing_ok=False)
    if consumer:
        await _ensure_consumer(js, config, report)
    return report


async def _ensure_stream(js, wanted: StreamConfig, report: SetupReport, update: bool) -> None:
    label = f"stream {wanted.name} ({', '.join(wanted.subjects)})"
    try:
        info = await js.stream_info(wanted.name)
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(wanted)
            report.created.append(f"{label}, {_describe(wanted)}")
            return
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != STREAM_EXISTS:      # another central writer made it just now
                raise
            info = await js.stream_info(wanted.name)
    differences = stream_differences(info.config, wanted)
    if differences and update:
        await js.update_stream(_updated(info.config, wanted))
        report.updated.append(f"{label}: {'; '.join(differences)}")
        return
    report.existing.append(f"{label}, {_describe(info.config)}")
    report.differences += [f"{wanted.name}: {d}" for d in differences]


def _updated(current: StreamConfig, wanted: StreamConfig) -> StreamConfig:
    """``current`` with what JetStream lets an update change taken from ``wanted`` (the
    retention policy and the storage type are fixed once a stream exists)."""
    for name in ("max_age", "max_bytes", "duplicate_window", "num_replicas", "discard"):
        setattr(current, name, getattr(wanted, name))
    return current


def stream_differences(current: StreamConfig, wanted: StreamConfig) -> list[str]:
    out = []
    for name, label in (("num_replicas", "replicas"), ("retention", "retention"),
                        ("discard", "discard"), ("max_age", "max_age"),
                        ("max_bytes", "max_bytes"), ("duplicate_window", "duplicate_window")):
        have, want = _norm(name, getattr(current, name)), _norm(name, getattr(wanted, name))
        if have != want:
            out.append(f"{label} is {have} (config: {want})")
    if _norm("discard", current.discard) == "old":
        out.append("discard is old: when the stream is full JetStream deletes the oldest "
                   "messages, even those no central writer has written yet")
    return list(dict.fromkeys(out))


def _norm(name: str, value):
    if hasattr(value, "value"):
        return value.value
    if name == "max_age":
        return f"{value or 0:g}s"
    if name == "max_bytes":
        return "no limit" if value in (None, -1, 0) else value
    if name == "duplicate_window":
        return f"{value or 0:g}s"
    return value


def _describe(config: StreamConfig) -> str:
    return (f"replicas {config.num_replicas}, retention {_norm('retention', config.retention)}, "
            f"discard {_norm('discard', config.discard)}, max_age {_norm('max_age', config.max_age)}, "
            f"max_bytes {_norm('max_bytes', config.max_bytes)}, duplicate window "
            f"{_norm('duplicate_window', config.duplicate_window)}")


async def _check_capture(js, probe: str, wanted: StreamConfig, missing_ok: bool) -> None:
    """The stream named in the config must be the one that captures its subjects."""
    try:
        name = await js.find_stream_name_by_subject(probe)
    except nats.js.errors.NotFoundError:
        name = None
    if name == wanted.name or name is None and missing_ok:
        return
    raise ConfigError(f"subject {probe} is captured by stream {name!r}, not by "
                      f"{wanted.name!r}: fix nats.stream or that stream's subjects (stream "
                      f"{wanted.name} must capture {', '.join(wanted.subjects)})")


async def _ensure_consumer(js, config: NatsConfig, report: SetupReport) -> None:
    label = f"durable consumer {config.durable} on {config.stream}"
    try:
        info = await js.consumer_info(config.stream, config.durable)
    except nats.js.errors.NotFoundError:
        await js.add_consumer(config.stream, consumer_config(config))
        report.created.append(f"{label} (ack wait {config.ack_wait:g} s, max ack pending "
                              f"{config.max_ack_pending})")
        return
    report.existing.append(label)
    current = info.config
    if current.ack_policy != AckPolicy.EXPLICIT:
        raise ConfigError(f"{label} acks {current.ack_policy.value}, not explicit: with several "
                          f"central writers an ack could cover points not yet written; delete "
                          f"it and run ha-ingestor nats init")
    if (current.filter_subject or config.points_subjects) != config.points_subjects:
        report.differences.append(f"{config.durable}: filter subject is "
                                  f"{current.filter_subject} (config: {config.points_subjects})")


async def consumer_behind(js, config: NatsConfig) -> tuple[int, int] | None:
    """(stream's last sequence, consumer's last delivered) when the consumer has nothing
    pending or unacked although the stream holds newer messages: its leader's copy of the stream
    is behind the stream's leader (seen with nats-server 2.9 after a whole-cluster restart: the
    messages would never be delivered). None when it is in step."""
    stream_info = await js.stream_info(config.stream)
    consumer = await js.consumer_info(config.stream, config.durable)
    last, delivered = stream_info.state.last_seq, consumer.delivered.stream_seq
    if consumer.num_pending == 0 and consumer.num_ack_pending == 0 and last > delivered:
        return last, delivered
    return None


async def step_down_consumer(nc, config: NatsConfig) -> None:
    """Ask the consumer's leader to hand over to a replica (one that has the whole stream)."""
    await nc.request(f"$JS.API.CONSUMER.LEADER.STEPDOWN.{config.stream}.{config.durable}", b"",
                     timeout=config.connect_timeout)
