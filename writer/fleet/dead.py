"""Dead letters of the central writers: points InfluxDB rejected for good, kept in JetStream.

A central writer has no disk of its own worth trusting (any of N writers may take any message),
so what InfluxDB rejects goes to the dead-letter stream (``<stream>_DEAD``, subjects
``<prefix>.dead.<site>``): one message per point, the line as the body, InfluxDB's reason in the
``Ha-Ingestor-Reason`` header. Its original messages are acked only once the dead letters are
stored. ``ha-ingestor nats dead`` lists them; ``nats requeue-dead`` publishes them back to their
site's subject (after fixing what rejected them) and deletes them from the dead-letter stream.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import nats.js.errors

from ha_ingestor import metrics
from ha_ingestor.backoff import Backoff
from ha_ingestor.config.fleet import NatsConfig
from ha_ingestor.errors import TransientError
from ha_ingestor.lifecycle import StopFlag
from writer.fleet.link import NatsLink
from writer.sinks import AccessDenied

log = logging.getLogger("writer.central")

REASON_HEADER = "Ha-Ingestor-Reason"
SUBJECT_HEADER = "Ha-Ingestor-Subject"


@dataclass(frozen=True)
class DeadPoint:
    seq: int
    site: str
    line: str
    reason: str
    subject: str


def _header_text(text: str) -> str:
    return " ".join(text.split())[:2000]


class DeadLetters:
    def __init__(self, link: NatsLink, config: NatsConfig, stop: StopFlag):
        self.link = link
        self.config = config
        self.stop = stop
        self.backoff = Backoff(base=1.0, factor=2.0, cap=30.0)

    def store(self, batch) -> bool:
        """Publish the round's dead letters; retried until stored (True) or a stop (False)."""
        while True:
            try:
                self.link.call(lambda: self._publish(batch), self.config.publish_timeout)
                self.backoff.reset()
                break
            except (TransientError, AccessDenied) as exc:
                delay = self.backoff.next_delay()
                log.error("cannot store %d dead letters in %s (%s); retrying in %.0f s",
                          len(batch.dead), self.config.dead_stream, exc, delay)
                if self.stop.wait(delay):
                    return False
        metrics.DEAD_LETTERS.labels(source="nats", reason="rejected").inc(len(batch.dead))
        log.warning("%d points moved to the dead-letter stream %s, first: %s", len(batch.dead),
                    self.config.dead_stream, batch.dead[0][2][:300])
        return True

    async def _publish(self, batch) -> None:
        js = await self.link.jetstream()
        for number, (index, line, reason) in enumerate(batch.dead):
            msg = batch.messages[index]
            site = msg.subject.rsplit(".", 1)[-1]
            msg_id = f"{msg.metadata.sequence.stream}:{number}"
            await js.publish(self.config.dead_subject(site), line,
                             headers={REASON_HEADER: _header_text(reason),
                                      SUBJECT_HEADER: msg.subject, "Nats-Msg-Id": msg_id})


async def list_dead(js, config: NatsConfig, limit: int | None) -> list[DeadPoint]:
    """The dead letters, oldest first."""
    info = await js.stream_info(config.dead_stream)
    out: list[DeadPoint] = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        if limit is not None and len(out) >= limit:
            break
        try:
            raw = await js.get_msg(config.dead_stream, seq)
        except nats.js.errors.NotFoundError:
            continue                     # deleted (requeued) or never there
        headers = raw.headers or {}
        out.append(DeadPoint(seq=seq, site=raw.subject.rsplit(".", 1)[-1],
                             line=(raw.data or b"").decode("utf-8", "replace"),
                             reason=headers.get(REASON_HEADER, ""),
                             subject=headers.get(SUBJECT_HEADER, "")))
    return out


async def requeue(js, config: NatsConfig, seqs: set[int] | None) -> int:
    """Publish dead letters back to the subject they came from, then delete them."""
    count = 0
    for point in await list_dead(js, config, None):
        if seqs is not None and point.seq not in seqs:
            continue
        subject = point.subject or config.points_subject(point.site)
        await js.publish(subject, point.line.encode("utf-8"),
                         headers={"Nats-Msg-Id": f"requeued:{config.dead_stream}:{point.seq}"})
        await js.delete_msg(config.dead_stream, point.seq)
        count += 1
    return count
