"""The paho client for a persistent MQTT session, and what a CONNACK or SUBACK refusal means.

Persistence is the point: the broker keeps our subscriptions and every QoS 1 message published
while the collector is away, and re-sends what we had not acknowledged when we return.

- MQTT 3.1.1: ``clean_session=False`` and a fixed ``client_id``.
- MQTT 5: ``clean_start=False`` on every connect (paho's default is a clean start on the first
  connect, which throws the queued messages away) and a Session Expiry Interval, without which an
  MQTT 5 session ends with the connection. We also send a Receive Maximum so the broker may have
  two batches in flight to us whatever its ``max_inflight_messages`` says. Subscriptions ask for
  Retain Handling 1: retained messages only for a subscription the session did not hold.
"""

from __future__ import annotations

import logging
import ssl
import struct

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.client import PUBACK
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from ha_ingestor.errors import AuthError, ConfigError


log = logging.getLogger("collectors.mqtt")

PROTOCOLS = {"3.1.1": mqtt.MQTTv311, "5": mqtt.MQTTv5}

# CONNACK reason codes (MQTT 5 numbering; paho maps 3.1.1 return codes onto these) after which
# retrying with the same settings cannot succeed: exit with EXIT_AUTH.
AUTH_REFUSALS = {
    133: "client identifier not valid (mqtt.client_id refused)",
    134: "bad user name or password",
    135: "not authorized",
    138: "banned",
    140: "bad authentication method",
}

SUBACK_FAILURE = 0x80


def check_config(mqtt_config) -> None:
    """Warn about settings that work differently from what they say (the topic filters were
    checked when the config was loaded)."""
    if mqtt_config.qos == 2:
        log.warning("mqtt.qos 2 is subscribed as QoS 1: paho confirms QoS 2 messages to the "
                    "broker before we see them, QoS 1 with acknowledgement after the commit is "
                    "what guarantees delivery")


def subscription_qos(qos: int) -> int:
    """The QoS we subscribe with. QoS 2 is taken as 1: paho sends PUBREC (after which the broker
    forgets the payload) before the application sees the message, so a crash before our commit
    would lose it. QoS 1 with a manual PUBACK after the commit is at-least-once."""
    return min(qos, 1)


def subscribe_args(filters, qos: int, v5: bool) -> list[tuple]:
    """``client.subscribe`` arguments for ``filters``. MQTT 5: Retain Handling 1, so that the
    broker sends retained messages for a new subscription only, not for one it holds."""
    if not v5:
        return [(topic_filter, qos) for topic_filter in filters]
    return [(topic_filter, SubscribeOptions(
        qos=qos, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB))
        for topic_filter in filters]


def receive_maximum(batch_events: int) -> int:
    """MQTT 5 Receive Maximum: room for one batch committing and one filling."""
    return max(20, min(65535, 2 * batch_events))


def make_client(mqtt_config, batch_events: int) -> mqtt.Client:
    """A paho client (VERSION2 callbacks) with manual acknowledgement, credentials and TLS."""
    protocol = PROTOCOLS.get(str(mqtt_config.protocol))
    if protocol is None:
        raise ConfigError(f"mqtt.protocol must be one of {', '.join(PROTOCOLS)}: "
                          f"{mqtt_config.protocol!r}")
    if not mqtt_config.client_id:
        raise ConfigError("mqtt.client_id must be set: a persistent session needs a fixed id")
    kwargs = {} if protocol == mqtt.MQTTv5 else {"clean_session": False}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=mqtt_config.client_id,
                         protocol=protocol, manual_ack=True, reconnect_on_failure=False,
                         **kwargs)
    # paho's default: an exception raised in a callback propagates out of the network loop. Never
    # turn that off: with suppress_exceptions paho logs and carries on, and the message is lost.
    client.suppress_exceptions = False
    if mqtt_config.username:
        client.username_pw_set(mqtt_config.username, mqtt_config.password)
    if mqtt_config.tls is not None and mqtt_config.tls.enabled:
        configure_tls(client, mqtt_config.tls)
    return client


def configure_tls(client: mqtt.Client, tls) -> None:
    try:
        client.tls_set(ca_certs=_path(tls.ca_file), certfile=_path(tls.cert_file),
                       keyfile=_path(tls.key_file),
                       cert_reqs=ssl.CERT_REQUIRED if tls.verify else ssl.CERT_NONE)
    except (OSError, ssl.SSLError, ValueError) as err:
        raise ConfigError(f"mqtt.tls: cannot load the CA file, certificate or key: {err}") from err
    if not tls.verify:
        client.tls_insecure_set(True)


def _path(value) -> str | None:
    return str(value) if value else None


def connect_properties(mqtt_config, batch_events: int) -> Properties | None:
    if PROTOCOLS[str(mqtt_config.protocol)] != mqtt.MQTTv5:
        return None
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = max(0, min(int(mqtt_config.session_expiry), 0xFFFFFFFF))
    props.ReceiveMaximum = receive_maximum(batch_events)
    return props


def connect(client: mqtt.Client, mqtt_config, batch_events: int) -> None:
    """Open the TCP (TLS) connection and send CONNECT; CONNACK arrives through the network loop.
    Raises OSError (or ssl.SSLError) when the broker cannot be reached."""
    kwargs = {}
    props = connect_properties(mqtt_config, batch_events)
    if props is not None:
        kwargs = {"clean_start": False, "properties": props}
    client.connect(mqtt_config.host, int(mqtt_config.port), keepalive=int(mqtt_config.keepalive),
                   **kwargs)


_PUBACK = struct.Struct("!BBH")


def ack_all(client: mqtt.Client, acks: list[tuple[int, int]]) -> None:
    """Acknowledge a committed batch. QoS 1 PUBACKs (4 bytes each, the same bytes paho's
    ``ack()`` queues) go out as one write instead of one ``send()`` per message: this is a
    third of the collector's CPU time at 30 000 msgs/s otherwise. Uses paho's packet queue
    (``_packet_queue``, paho 2.x); anything else goes through the public ``ack()``."""
    queue_packet = getattr(client, "_packet_queue", None)
    if queue_packet is None:
        for mid, qos in acks:
            client.ack(mid, qos)
        return
    pack = _PUBACK.pack
    blob = b"".join([pack(PUBACK, 2, mid) for mid, qos in acks if qos == 1])
    if blob:
        queue_packet(PUBACK, blob, 0, 0)
    for mid, qos in acks:
        if qos != 1:
            client.ack(mid, qos)


def connack_refusal(reason_code: ReasonCode, where: str) -> AuthError | None:
    """An AuthError for a CONNACK that retrying cannot fix, else None (retry with backoff)."""
    what = AUTH_REFUSALS.get(reason_code.value)
    if what is None:
        return None
    return AuthError(f"MQTT authentication failed: broker {where} refused the connection: "
                     f"{what} (CONNACK reason code {reason_code.value}); check "
                     f"mqtt.username, mqtt.password and mqtt.client_id")


def suback_refusals(topics: list[str], reason_codes: list[ReasonCode]) -> list[str]:
    """Topic filters the broker refused (SUBACK failure 0x80, or an MQTT 5 error reason)."""
    return [f"{topic} ({code})" for topic, code in zip(topics, reason_codes)
            if code.value >= SUBACK_FAILURE]
