"""Recognise messages the broker re-sends although they are already in the queue.

At-least-once has one gap: a batch committed whose PUBACKs never reached the broker (the process
was killed, or the connection dropped, between the commit and the acknowledgement). The broker
re-sends those messages, with the DUP flag and their original packet ids, and each copy would
become a second point (the point's time is the receive time).

So every commit also stores, in the same transaction (queue meta), a fingerprint of each QoS 1
message of the last ``KEEP_BATCHES`` batches: packet id plus a CRC-32 of topic and payload. A
re-sent message (DUP set) whose fingerprint is there is acknowledged without being stored again.
It is a multiset: two identical messages in a batch are two entries. Packet ids are reused only
after 65 535 newer messages, far more than the batches kept, and only copies flagged DUP are
compared, so a new message is never mistaken for an old one.
"""

from __future__ import annotations

import base64
import struct
import zlib
from collections import Counter, deque

META_KEY = "mqtt.committed_fingerprints"
KEEP_BATCHES = 3      # the batch being acknowledged and the ones whose acks may be in flight

_FP = struct.Struct("!HI")


def fingerprint(message) -> bytes:
    return _FP.pack(message.mid, zlib.crc32(message.payload, zlib.crc32(message._topic)))


class Redelivery:
    def __init__(self, stored: str | None = None):
        self._batches: deque[list[bytes]] = deque()
        self._seen: Counter = Counter()
        if stored:
            self._remember(_decode(stored))

    def already_committed(self, message) -> bool:
        """For a DUP message: True (and forget it) when its first copy is in the queue."""
        fp = fingerprint(message)
        if self._seen[fp] > 0:
            self._seen[fp] -= 1
            return True
        return False

    def meta_with(self, fingerprints: list[bytes]) -> str:
        """The meta value to commit with a batch holding ``fingerprints``."""
        kept = list(self._batches)[-(KEEP_BATCHES - 1):] if KEEP_BATCHES > 1 else []
        return base64.b64encode(b"".join(b"".join(batch) for batch in kept)
                                + b"".join(fingerprints)).decode()

    def remember(self, fingerprints: list[bytes]) -> None:
        """The batch holding ``fingerprints`` is committed."""
        if fingerprints:
            self._remember(fingerprints)

    def _remember(self, fingerprints: list[bytes]) -> None:
        self._batches.append(fingerprints)
        self._seen.update(fingerprints)
        while len(self._batches) > KEEP_BATCHES:
            for fp in self._batches.popleft():
                left = self._seen[fp] - 1
                if left > 0:
                    self._seen[fp] = left
                else:
                    del self._seen[fp]


def _decode(stored: str) -> list[bytes]:
    raw = base64.b64decode(stored)
    return [raw[i:i + _FP.size] for i in range(0, len(raw) - _FP.size + 1, _FP.size)]
