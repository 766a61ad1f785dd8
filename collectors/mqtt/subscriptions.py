"""Which topic filters to subscribe on each connect, so that the broker sends retained messages
again only where the protocol makes it.

The broker answers a SUBSCRIBE with every matching retained message; MQTT 3.1.1 does so even for
a filter the session already holds. A persistent session keeps our subscriptions, so on CONNACK:

- MQTT 3.1.1, session present, and it holds exactly the filters configured (at the configured
  QoS): subscribe nothing;
- MQTT 3.1.1, session present, filters changed: subscribe the new ones, unsubscribe the removed
  ones, so a config change takes effect;
- MQTT 5, session present: subscribe every filter with Retain Handling 1 (the broker sends
  retained messages only for a subscription the session did not hold, so none for the ones it
  holds), unsubscribe the removed ones. Subscribing again costs one packet, and it holds even
  when the broker restored an older session than the record says (a broker that crashed before
  saving a change);
- no session (first start, session expired, broker lost it), or not known what it holds:
  subscribe all, and unsubscribe whatever may be left over from an earlier config.

Retained messages sent all the same are recognised by retained.py.

What the session holds is kept in the queue file's meta (``mqtt.subscriptions``). The danger is
a record saying "held" for a session the broker has since created empty: we would subscribe
nothing and receive nothing, for good. The broker creates a session as soon as our CONNECT
arrives, before we read its CONNACK, so before every CONNECT the record is durably marked
unconfirmed, and it is confirmed only after CONNACK (session present, nothing to change) or after
the last SUBACK/UNSUBACK. A process killed in between leaves it unconfirmed: the next start
subscribes everything again.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from typing import Callable

from collectors.mqtt import session

log = logging.getLogger("collectors.mqtt")

META_KEY = "mqtt.subscriptions"


@dataclass(frozen=True)
class Record:
    """What the broker's session for ``client_id`` at ``broker`` holds."""

    broker: str
    client_id: str
    qos: int
    held: tuple[str, ...] | None     # the filters it holds for sure; None: not known
    possible: tuple[str, ...]        # every filter it may hold (to unsubscribe the unwanted)

    def dumps(self) -> str:
        return json.dumps({"broker": self.broker, "client_id": self.client_id, "qos": self.qos,
                           "held": None if self.held is None else list(self.held),
                           "possible": list(self.possible)}, sort_keys=True)

    @classmethod
    def loads(cls, text: str | None) -> "Record | None":
        """None for nothing stored or anything unreadable (then nothing is trusted)."""
        try:
            data = json.loads(text or "")
            held = data["held"]
            return cls(str(data["broker"]), str(data["client_id"]), int(data["qos"]),
                       None if held is None else tuple(map(str, held)),
                       tuple(map(str, data["possible"])))
        except (ValueError, TypeError, KeyError):
            return None


@dataclass(frozen=True)
class Plan:
    subscribe: tuple[str, ...]
    unsubscribe: tuple[str, ...]


class Subscriptions:
    """Network thread only. ``save(value)`` has the committer write the record; it returns an
    event set once the value is durable."""

    def __init__(self, broker: str, client_id: str, qos: int, filters, v5: bool,
                 stored: str | None, save: Callable[[str], threading.Event]):
        self.broker, self.client_id, self.qos, self.v5 = broker, client_id, qos, v5
        self.wanted = tuple(sorted(set(filters)))
        record = Record.loads(stored)
        if record is not None and (record.broker, record.client_id) != (broker, client_id):
            record = None                 # another broker's or client id's session
        self._known = record              # what the session holds, as far as we know
        self._saved = record              # the record as last written (or being written)
        self._save = save
        self._writing: threading.Event | None = None
        self._at_connect: Record | None = None
        self.waiting: dict[int, tuple[str, tuple[str, ...]]] = {}   # mid -> (kind, filters)
        self._subscribing = False

    def ready_to_connect(self) -> bool:
        """True once the record is durably unconfirmed; otherwise starts that write (call again).
        A CONNECT must not go out before."""
        if self._writing is not None:
            if not self._writing.is_set():
                return False
            self._writing = None
        possible = set(self.wanted) | set(self._saved.possible if self._saved else ())
        target = Record(self.broker, self.client_id, self.qos, None, tuple(sorted(possible)))
        if self._saved == target:
            return True
        self._saved = target
        self._writing = self._save(target.dumps())
        return self.ready_to_connect() if self._writing.is_set() else False

    def connect_sent(self) -> None:
        """CONNECT is on its way: until its CONNACK is read, nothing is known of the session."""
        self._at_connect, self._known = self._known, None

    def on_connack(self, session_present: bool) -> Plan:
        known, self._at_connect = self._at_connect, None
        self.waiting.clear()
        leftover = tuple(f for f in (self._saved.possible if self._saved else ())
                         if f not in self.wanted)
        if not session_present:
            return Plan(self.wanted, ())
        if not self.v5 and known is not None and known.held is not None and \
                known.qos == self.qos:
            return Plan(tuple(f for f in self.wanted if f not in known.held), leftover)
        return Plan(self.wanted, leftover)

    # --- on the wire (paho calls, from the network thread) ------------------------------------

    def send(self, client, plan: Plan) -> None:
        """Send what the plan says; with nothing to send the session holds it all already."""
        self._subscribing = bool(plan.subscribe)
        if plan.subscribe:
            _rc, mid = client.subscribe(session.subscribe_args(plan.subscribe, self.qos,
                                                               self.v5))
            self.sent(mid, "subscribe", plan.subscribe)
        if plan.unsubscribe:
            _rc, mid = client.unsubscribe(list(plan.unsubscribe))
            self.sent(mid, "unsubscribe", plan.unsubscribe)
        if not self.waiting:
            self.confirm()
            log.info("subscribed to %s at QoS %d (held by the broker's session: nothing sent, "
                     "no retained message sent again)", ", ".join(self.wanted), self.qos)

    def on_suback(self, mid: int, reason_codes) -> list[str]:
        """The filters the broker refused ("topic (reason)"); none: acknowledged."""
        _kind, filters = self.waiting.get(mid, ("subscribe", ()))
        refused = session.suback_refusals(list(filters), reason_codes)
        if not refused:
            self.acknowledged(mid)
            log.info("subscribed to %s at QoS %d%s", ", ".join(filters), self.qos,
                     " (Retain Handling 1: retained messages only for a subscription the "
                     "session did not hold)" if self.v5 else "")
        return refused

    def on_unsuback(self, mid: int) -> None:
        _kind, filters = self.waiting.get(mid, ("unsubscribe", ()))
        self.acknowledged(mid)
        log.info("unsubscribed from %s (no longer in mqtt.topics)", ", ".join(filters))
        if not self.waiting and not self._subscribing:
            log.info("subscribed to %s at QoS %d (held by the broker's session)",
                     ", ".join(self.wanted), self.qos)

    # --- state ---------------------------------------------------------------------------------

    def sent(self, mid: int, kind: str, filters: tuple[str, ...]) -> None:
        self.waiting[mid] = (kind, filters)

    def acknowledged(self, mid: int) -> tuple[str, tuple[str, ...]] | None:
        """A SUBACK or UNSUBACK arrived; the last one confirms the record."""
        done = self.waiting.pop(mid, None)
        if done is not None and not self.waiting:
            self.confirm()
        return done

    def confirm(self) -> None:
        """The session holds exactly the wanted filters."""
        record = Record(self.broker, self.client_id, self.qos, self.wanted, self.wanted)
        self._known = self._saved = record
        self._save(record.dumps())
