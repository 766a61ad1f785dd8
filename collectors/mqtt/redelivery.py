"""Recognise messages the broker re-sends although they are already in the queue.

At-least-once leaves one window: a batch is committed but its PUBACKs never reach the broker
(the connection dropped or the process was killed before they were written, or they were lost
with it). The broker re-sends those messages with the DUP flag and their original packet ids,
and each copy would become a second point (the point's time is the receive time). Every message
of a committed batch is fingerprinted (packet id + CRC-32 of topic and payload); a re-sent copy
(DUP set) whose fingerprint matches is acknowledged without being stored again. Two sources:

- **Never acknowledged** (exact, always used): batches whose PUBACKs we dropped because their
  connection was gone. MQTT forbids reusing a packet id until its PUBACK arrives, so a re-sent
  message with such an id *is* the committed one.
- **Recently committed** (the last ``KEEP_BATCHES`` batches, also written to the queue meta in
  the same transaction as each batch, so it survives SIGKILL): their PUBACKs were sent but may
  have been lost. A match is safe only if the broker does not hand a just-freed packet id to a
  new, identical message. Mosquitto counts packet ids up (they repeat after 65 535 messages), but
  some brokers re-use the lowest free id at once. So this source is used only once the broker has
  been seen not to: ``TRUST_AFTER`` committed batches in which no first-time (non-DUP) message
  carried a packet id still in the window. One such re-use and it is off for good (in this
  process, and the meta says so for the next). A duplicate is the safe side of at-least-once.
"""

from __future__ import annotations

import base64
import struct
import zlib
from collections import Counter, deque

META_KEY = "mqtt.recent_fingerprints"
KEEP_BATCHES = 3        # the batch being acknowledged and the ones whose PUBACKs may be in flight
TRUST_AFTER = 2 * KEEP_BATCHES
MAX_NEVER_ACKED = 200_000

_FP = struct.Struct("!HI")
_TRUSTED = "t:"


def fingerprint(message) -> bytes:
    return _FP.pack(message.mid, zlib.crc32(message.payload, zlib.crc32(message._topic)))


def _mid(fp: bytes) -> int:
    return (fp[0] << 8) | fp[1]


class Redelivery:
    """Used by the committer thread only."""

    def __init__(self, stored: str | None = None):
        self._never_acked: Counter = Counter()
        self._window: deque[list[bytes]] = deque()
        self._recent: Counter = Counter()
        self._mids: Counter = Counter()
        self._clean_batches = 0
        self.reuse_seen = False
        if stored and stored.startswith(_TRUSTED):
            raw = base64.b64decode(stored[len(_TRUSTED):])
            self._add([raw[i:i + _FP.size] for i in range(0, len(raw), _FP.size)])
            self._clean_batches = TRUST_AFTER

    @property
    def trusted(self) -> bool:
        return not self.reuse_seen and self._clean_batches >= TRUST_AFTER

    # --- per message ---------------------------------------------------------------------------

    def first_copy(self, message) -> None:
        """A message without DUP: if its packet id is still in the window, the broker re-uses
        freed ids at once and the recent fingerprints must not be trusted."""
        if not self.reuse_seen and message.mid in self._mids:
            self.reuse_seen = True
            self._window.clear()
            self._recent.clear()
            self._mids.clear()

    def already_committed(self, message) -> bool:
        """For a DUP message: True (and forget that copy) when it is known to be in the queue."""
        fp = fingerprint(message)
        if _take(self._never_acked, fp):
            return True
        return self.trusted and _take(self._recent, fp)

    # --- per batch -----------------------------------------------------------------------------

    def meta_with(self, fingerprints: list[bytes]) -> str:
        """The meta value to commit with a batch holding ``fingerprints`` ("" while untrusted:
        a restart must not trust what this process has not)."""
        if not self.trusted:
            return ""
        kept = list(self._window)[-(KEEP_BATCHES - 1):]
        return _TRUSTED + base64.b64encode(b"".join(b"".join(b) for b in kept)
                                           + b"".join(fingerprints)).decode()

    def committed(self, fingerprints: list[bytes]) -> None:
        """The batch holding ``fingerprints`` is durable."""
        if self.reuse_seen:
            return
        self._clean_batches += 1
        self._add(fingerprints)

    def never_acknowledged(self, fingerprints: list[bytes]) -> None:
        """A committed batch whose PUBACKs were dropped because its connection was lost."""
        if len(self._never_acked) + len(fingerprints) > MAX_NEVER_ACKED:
            self._never_acked.clear()
        self._never_acked.update(fingerprints)

    def forget(self) -> None:
        """The broker has no session for us: nothing will be re-sent."""
        self._never_acked.clear()
        self._window.clear()
        self._recent.clear()
        self._mids.clear()

    def _add(self, fingerprints: list[bytes]) -> None:
        self._window.append(fingerprints)
        self._recent.update(fingerprints)
        self._mids.update(_mid(fp) for fp in fingerprints)
        while len(self._window) > KEEP_BATCHES:
            for fp in self._window.popleft():
                _take(self._recent, fp)
                _take(self._mids, _mid(fp))


def _take(counter: Counter, key) -> bool:
    count = counter.get(key, 0)
    if count <= 0:
        return False
    if count == 1:
        del counter[key]
    else:
        counter[key] = count - 1
    return True
