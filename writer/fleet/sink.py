"""A site's writer → NATS JetStream: the sink behind ``nats.publish: true``.

Same contract as the InfluxDB sinks (``write`` returns once every point is stored, else raises),
so the writer loop keeps owning batching, retries and dead letters. What it does with a batch:

- every point gets the site tag (``nats.site_tag=<site>``); a point that has that tag already is
  rejected (``PermanentError`` naming it: it becomes a dead letter, never a silently changed
  point);
- the lines of one queue item become messages of at most ``nats.message_points`` points (and
  below the server's ``max_payload``), InfluxDB line protocol, one point per line, published to
  ``<prefix>.points.<site>``, so the central side can be our central writers or any consumer of
  line protocol (Telegraf's ``nats_consumer`` with ``data_format = "influx"``);
- each message carries ``Nats-Msg-Id: <queue item>:<first>-<last position>``: a re-send of the
  same item (after a crash, a timeout, a lost ack) is the same message with the same id, and
  JetStream drops it within ``nats.duplicate_window``;
- all messages are published at once and ``write`` returns only when JetStream acknowledged
  every one of them; then, and only then, the loop acks the queue items.
"""

from __future__ import annotations

import asyncio
import logging

import nats.errors
import nats.js.errors

from ha_ingestor.config.fleet import NatsConfig
from ha_ingestor.errors import PermanentError, TransientError
from writer.fleet.link import NatsLink
from writer.lineprotocol import EXACT
from writer.sinks import AccessDenied

log = logging.getLogger("writer.nats")

HEADER_ROOM = 512                    # bytes kept free of max_payload for subject and headers
MESSAGE_TOO_LARGE = 10054            # JetStream: message size exceeds maximum allowed
BACKSLASH = ord("\\")


def series_end(line: bytes) -> int:
    """Index of the space that ends the series key (measurement and tags): the first space
    not escaped by a backslash."""
    index = line.find(b" ")
    while index > 0 and _escaped(line, index):
        index = line.find(b" ", index + 1)
    return index


def _escaped(line: bytes, index: int) -> bool:
    slashes = 0
    while index - slashes - 1 >= 0 and line[index - slashes - 1] == BACKSLASH:
        slashes += 1
    return slashes % 2 == 1


def has_tag(series: bytes, key: bytes) -> bool:
    """Whether the series key ``measurement,k=v,...`` has tag ``key`` (already escaped)."""
    start = 0
    needle = b"," + key + b"="
    while True:
        index = series.find(needle, start)
        if index < 0:
            return False
        if not _escaped(series, index):
            return True
        start = index + 1


class NatsSink:
    """Publishes points of a site to its subject; see the module docstring."""

    wants_origins = True     # the writer loop passes (queue item, position) of every line

    def __init__(self, config: NatsConfig, site: str, link: NatsLink | None = None):
        self.config = config
        self.site = site
        self.subject = config.points_subject(site)
        self.tag_key = EXACT.tag[config.site_tag].encode("utf-8")
        self.tag = b"," + self.tag_key + b"=" + EXACT.tag[site].encode("utf-8")
        self.link = link or NatsLink(config, f"ha-ingestor site {site}")
        self.url = self.link.servers
        self.duplicates = 0          # re-sent messages JetStream dropped (a crash, a lost ack)
        self.published = 0

    def tagged(self, line: bytes) -> bytes:
        end = series_end(line)
        if end < 0:
            raise PermanentError(f"not a line of line protocol: {line[:200]!r}")
        series = line[:end]
        if has_tag(series, self.tag_key):
            raise PermanentError(f"the point already has a tag {self.config.site_tag!r}, the "
                                 f"tag nats.site_tag adds for the site: rename one of them")
        return series + self.tag + line[end:]

    def write(self, lines: list[bytes], origins: list[tuple[str, int]] | None = None) -> None:
        """Publish ``lines``; ``origins[i]`` is (queue item key, position) of line i."""
        if origins is None or len(origins) != len(lines):
            raise ValueError("the NATS sink needs the queue item and position of every line")
        tagged = [self.tagged(line) for line in lines]
        try:
            self.link.call(lambda: self._publish(tagged, origins), self.config.publish_timeout)
        except (TransientError, AccessDenied):
            self.link.reset()      # a fresh connection for the re-send: no stale ack waiters
            raise

    async def _publish(self, lines: list[bytes], origins: list[tuple[str, int]]) -> None:
        js = await self.link.jetstream()
        limit = max(1024, self.link.max_payload() - HEADER_ROOM)
        messages = pack(lines, origins, self.config.message_points, limit)
        futures = []
        try:
            for msg_id, payload in messages:
                futures.append(await self._publish_one(js, msg_id, payload))
            done, pending = await asyncio.wait(futures, timeout=self.config.publish_timeout)
        finally:
            for future in futures:
                future.cancel()       # no-op for the settled ones; frees the waiters' slots
        self._settle(messages, futures, pending)

    async def _publish_one(self, js, msg_id: str, payload: bytes) -> asyncio.Future:
        try:
            return await js.publish_async(self.subject, payload, headers={"Nats-Msg-Id": msg_id})
        except nats.errors.MaxPayloadError as exc:     # this message only: the rest goes on
            future = asyncio.get_running_loop().create_future()
            future.set_exception(exc)
            return future

    def _settle(self, messages, futures, pending) -> None:
        """Count the acks; raise for what was not stored (a re-send stores only that)."""
        failures = []
        duplicates = self.duplicates
        for (msg_id, payload), future in zip(messages, futures):
            if future in pending:
                failures.append(TimeoutError(f"no acknowledgement within "
                                             f"{self.config.publish_timeout:g} s"))
            elif future.exception() is not None:
                failures.append(future.exception())
            else:
                self.published += 1
                self.duplicates += bool(future.result().duplicate)
        if self.duplicates > duplicates:
            log.info("%d of %d messages were in JetStream already (sent before a crash or a lost "
                     "acknowledgement): dropped by JetStream as duplicates",
                     self.duplicates - duplicates, len(messages))
        if not failures:
            return
        first = failures[0]
        if all(_too_large(exc) for exc in failures):
            raise PermanentError(f"JetStream refused a message as too large: {first}")
        raise self.link.classify(first)

    def ping(self) -> bool:
        try:
            self.link.call(self._ping, self.config.connect_timeout * 2)
            return True
        except (TransientError, AccessDenied):
            return False

    async def _ping(self) -> None:
        nc = await self.link.connection()
        await nc.flush(timeout=self.config.connect_timeout)

    def close(self) -> None:
        self.link.close()


def pack(lines: list[bytes], origins: list[tuple[str, int]], max_points: int, max_bytes: int
         ) -> list[tuple[str, bytes]]:
    """Messages of consecutive lines of one queue item, at most ``max_points`` lines and
    ``max_bytes`` bytes each (a longer single line travels alone, and JetStream refuses it).
    The id names the item and the first and last position, so the same lines always make the
    same message."""
    messages: list[tuple[str, bytes]] = []
    chunk: list[bytes] = []
    size = 0
    first = last = None
    for data, origin in zip(lines, origins):
        if chunk and (origin[0] != first[0] or len(chunk) >= max_points
                      or size + len(data) + 1 > max_bytes):
            messages.append((_msg_id(first, last), b"\n".join(chunk)))
            chunk, size = [], 0
        if not chunk:
            first = origin
        chunk.append(data)
        size += len(data) + 1
        last = origin
    if chunk:
        messages.append((_msg_id(first, last), b"\n".join(chunk)))
    return messages


def _msg_id(first: tuple[str, int], last: tuple[str, int]) -> str:
    return f"{first[0]}:{first[1]}-{last[1]}"


def _too_large(exc: BaseException) -> bool:
    if isinstance(exc, nats.errors.MaxPayloadError):
        return True
    return isinstance(exc, nats.js.errors.APIError) and exc.err_code == MESSAGE_TOO_LARGE
