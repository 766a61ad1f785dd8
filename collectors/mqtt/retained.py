"""A retained message the broker sends again is not stored again.

The broker sends a topic's retained message (retain flag set on delivery) to every new
subscription, and MQTT 3.1.1 to every SUBSCRIBE, even one repeating a filter the session holds.
Stored each time, one retained message would become a point per collector start, stamped with
that start's receive time. So, for every topic on which a retained message has been delivered,
the collector remembers a digest of the payload of the last message it stored on that topic
(retained or live) and that message's receive time. A delivery with the retain flag set whose
payload matches is the message already stored: it is acknowledged and not stored again, and its
point stays the one its first arrival made. Every other message is stored: a retained message
with a new payload, and every live message (retain flag clear), repeated payload or not.

Why the last message of either kind: the broker's retained message is the last one published
with the retain flag, and while we are subscribed the broker forwards it to us live (retain flag
clear, MQTT 3.1.1 and MQTT 5 without Retain As Published). Where a publisher always retains
(mqtt_statestream, discovery configs, zigbee2mqtt with ``retain: true``) that live copy is the
last message on the topic, and the one the broker sends again later.

What is remembered is written to the queue file's meta table in the same transaction as the batch
that stored the message (one key per topic, ``mqtt.retained/<topic>``), so it is durable exactly
when the message is, across SIGKILL and power cuts. At most ``MAX_TOPICS`` topics are
remembered; past that the topic whose last message is oldest is forgotten, and a retained message
the broker sends again on a forgotten topic is stored once more (one new point), after which the
topic is remembered again.
"""

from __future__ import annotations

import hashlib
import logging
from itertools import islice

log = logging.getLogger("collectors.mqtt")

META_PREFIX = "mqtt.retained/"
MAX_TOPICS = 50_000


def digest(payload: bytes) -> bytes:
    """128 bits: a collision would make a new retained payload look stored."""
    return hashlib.blake2b(payload, digest_size=16).digest()


def _parse(value: str) -> tuple[int, bytes] | None:
    try:
        rx, hexdigest = value.split(" ", 1)
        return int(rx), bytes.fromhex(hexdigest)
    except ValueError:
        return None


class RetainedTopics:
    """Per remembered topic, the digest of the last message stored on it. Committer thread only.

    ``stored`` is what ``Producer.meta_items(META_PREFIX)`` returned: ``{key: "<rx> <hex>"}``."""

    def __init__(self, stored: dict[str, str] | None = None, limit: int = MAX_TOPICS):
        self.limit = max(1, limit)
        parsed = []
        for key, value in (stored or {}).items():
            entry = _parse(value)
            if key.startswith(META_PREFIX) and entry is not None:
                parsed.append((entry[0], key[len(META_PREFIX):], entry[1]))
        parsed.sort()                                  # oldest first: the order of forgetting
        self._last: dict[str, bytes] = {topic: d for _rx, topic, d in parsed[-self.limit:]}
        self._forget_logged = False

    def __len__(self) -> int:
        return len(self._last)

    def batch(self) -> "Pending":
        return Pending(self)

    def committed(self, pending: "Pending") -> None:
        """The batch ``pending`` was built for is durable, with ``pending.meta()``."""
        pending.meta()                                 # settles what is forgotten
        for topic in pending.forgotten:
            self._last.pop(topic, None)
        for topic, (value, _rx) in pending.changes.items():
            self._last.pop(topic, None)                # re-inserted last: most recent
            self._last[topic] = value
        if pending.forgotten and not self._forget_logged:
            self._forget_logged = True
            log.warning("remembering retained messages on %d topics, the limit: the topics "
                        "with the oldest messages are forgotten (a retained message the broker "
                        "sends again on one of them is stored once more)", self.limit)

    def seen(self, topic: str) -> None:
        """A retained message on ``topic`` was recognised: keep the topic among the recent."""
        value = self._last.pop(topic, None)
        if value is not None:
            self._last[topic] = value


class Pending:
    """One batch's view: what is remembered, plus what this batch stores."""

    def __init__(self, topics: RetainedTopics):
        self._topics = topics
        self.changes: dict[str, tuple[bytes, int]] = {}
        self.forgotten: list[str] = []
        self._meta: dict[str, str | None] | None = None

    def resent(self, topic: str, payload: bytes, retain: bool, rx: int) -> bool:
        """True for a retained delivery whose payload is the last one stored on its topic (do
        not store it); otherwise the message will be stored: remember it, when its topic is
        remembered or it is retained."""
        if not retain and topic not in self.changes and topic not in self._topics._last:
            return False                               # a live message on a live-only topic
        value = digest(payload)
        if retain and self._last(topic) == value:
            self._topics.seen(topic)
            return True
        self.changes[topic] = (value, rx)
        return False

    def record(self, topic: str, payload: bytes, retain: bool, rx: int) -> None:
        """Remember a message that will be stored, without asking whether it was re-sent."""
        if retain or topic in self.changes or topic in self._topics._last:
            self.changes[topic] = (digest(payload), rx)

    def _last(self, topic: str) -> bytes | None:
        change = self.changes.get(topic)
        return change[0] if change is not None else self._topics._last.get(topic)

    def meta(self) -> dict[str, str | None]:
        """The meta keys to commit with the batch: this batch's topics, and the oldest topics
        forgotten to stay within the limit (value None: delete)."""
        if self._meta is None:
            last = self._topics._last
            new = sum(1 for topic in self.changes if topic not in last)
            excess = len(last) + new - self._topics.limit
            if excess > 0:
                self.forgotten = list(islice((t for t in last if t not in self.changes), excess))
            self._meta = {META_PREFIX + t: None for t in self.forgotten}
            self._meta.update({META_PREFIX + t: f"{rx} {value.hex()}"
                               for t, (value, rx) in self.changes.items()})
        return self._meta
