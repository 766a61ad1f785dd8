"""What the ``ha-ingestor nats ...`` commands do: set up the streams, show their state, list and
requeue the central writers' dead letters. Each runs one NATS connection for its duration.

Refused credentials raise ``AuthError`` (exit code 3) naming the cause; an unreachable server
raises ``TransientError`` (exit code 1).
"""

from __future__ import annotations

from dataclasses import asdict

import nats.js.errors

from ha_ingestor.errors import AuthError
from writer.fleet import dead, stream
from writer.fleet.link import NatsLink
from writer.sinks import AccessDenied

CALL_TIMEOUT_S = 60.0


def _run(config, function):
    link = NatsLink(config.nats, "ha-ingestor nats")
    try:
        async def call():
            return await function(await link.jetstream())
        return link.call(call, CALL_TIMEOUT_S)
    except AccessDenied as exc:
        raise AuthError(str(exc)) from None
    finally:
        link.close()


def init(config, update: bool) -> list[str]:
    """Create the streams and the durable consumer; report what exists and how it differs."""
    return _run(config, lambda js: _init(js, config.nats, update))


async def _init(js, nats_config, update: bool) -> list[str]:
    report = await stream.ensure(js, nats_config, update=update)
    lines = report.lines()
    if report.differences and not update:
        lines.append("left as they are: `ha-ingestor nats init --update` applies the config "
                     "where JetStream allows it")
    return lines


def status(config) -> dict:
    """Stream, consumer and dead-letter counts, as one object."""
    return _run(config, lambda js: _status(js, config.nats))


async def _status(js, nats_config) -> dict:
    out: dict = {"stream": None, "consumer": None, "dead_letters": None}
    try:
        info = await js.stream_info(nats_config.stream)
        out["stream"] = {"name": nats_config.stream, "messages": info.state.messages,
                         "bytes": info.state.bytes, "first_seq": info.state.first_seq,
                         "last_seq": info.state.last_seq,
                         "replicas": info.config.num_replicas,
                         "leader": info.cluster.leader if info.cluster else None}
        consumer = await js.consumer_info(nats_config.stream, nats_config.durable)
        out["consumer"] = {"name": nats_config.durable, "pending": consumer.num_pending,
                           "ack_pending": consumer.num_ack_pending,
                           "redelivered": consumer.num_redelivered,
                           "waiting": consumer.num_waiting}
        dead_info = await js.stream_info(nats_config.dead_stream)
        out["dead_letters"] = dead_info.state.messages
    except nats.js.errors.NotFoundError:
        pass                         # what exists is shown; `nats init` makes the rest
    return out


def list_dead(config, limit: int | None) -> list[dict]:
    points = _run(config, lambda js: dead.list_dead(js, config.nats, limit))
    return [asdict(point) for point in points]


def requeue_dead(config, seqs: set[int] | None) -> int:
    return _run(config, lambda js: dead.requeue(js, config.nats, seqs))
