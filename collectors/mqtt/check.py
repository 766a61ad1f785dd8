"""``config check --connect`` for the broker: connect with the configured credentials and TLS,
then subscribe to every configured topic filter, the way the collector would.

A separate client id (``<mqtt.client_id>-check-<pid>``) with a clean session is used, so a
running collector keeps its connection and its persistent session is left alone: nothing is
delivered to, or acknowledged by, the check.
"""

from __future__ import annotations

import os
import threading

import paho.mqtt.client as mqtt

from collectors.mqtt import session
from ha_ingestor.errors import AuthError, TransientError


class _Replies:
    def __init__(self) -> None:
        self.connack = threading.Event()
        self.suback = threading.Event()
        self.reason = None
        self.suback_codes: list = []

    def on_connect(self, _client, _userdata, _flags, reason_code, _properties) -> None:
        self.reason = reason_code
        self.connack.set()

    def on_subscribe(self, _client, _userdata, _mid, reason_codes, _properties) -> None:
        self.suback_codes = list(reason_codes)
        self.suback.set()


def check_connection(config, timeout: float = 10.0) -> str:
    """What the broker accepted; raises AuthError (credentials or topics refused) or
    TransientError (not reachable)."""
    mqtt_config = config.mqtt
    where = f"{mqtt_config.host}:{mqtt_config.port}"
    client = _client(mqtt_config)
    replies = _Replies()
    client.on_connect, client.on_subscribe = replies.on_connect, replies.on_subscribe
    try:
        client.connect(mqtt_config.host, int(mqtt_config.port), keepalive=30)
    except OSError as exc:
        raise TransientError(f"cannot reach the MQTT broker at {where}: {exc}") from None
    client.loop_start()
    try:
        _wait(replies.connack, timeout, f"no CONNACK from the MQTT broker at {where}")
        if replies.reason.is_failure:
            raise session.connack_refusal(replies.reason, where) or TransientError(
                f"the MQTT broker at {where} refused the connection: {replies.reason}")
        filters = list(mqtt_config.topics)
        client.subscribe([(f, session.subscription_qos(mqtt_config.qos)) for f in filters])
        _wait(replies.suback, timeout, f"no SUBACK from the MQTT broker at {where}")
        refused = session.suback_refusals(filters, replies.suback_codes)
        if refused:
            raise AuthError(f"the MQTT broker at {where} refused the subscription to "
                            f"{', '.join(refused)}: not authorised for these topics "
                            f"(check the broker's ACL for mqtt.username)")
    finally:
        client.disconnect()
        client.loop_stop()
    user = f"user {mqtt_config.username!r}" if mqtt_config.username else "anonymous"
    return (f"{where} accepted {user}{' over TLS' if mqtt_config.tls.enabled else ''} and the "
            f"subscription to {len(filters)} topic filter(s)")


def _client(mqtt_config) -> mqtt.Client:
    protocol = session.PROTOCOLS[str(mqtt_config.protocol)]
    kwargs = {} if protocol == mqtt.MQTTv5 else {"clean_session": True}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                         client_id=f"{mqtt_config.client_id}-check-{os.getpid()}",
                         protocol=protocol, reconnect_on_failure=False, **kwargs)
    if mqtt_config.username:
        client.username_pw_set(mqtt_config.username, mqtt_config.password)
    if mqtt_config.tls.enabled:
        session.configure_tls(client, mqtt_config.tls)
    return client


def _wait(event: threading.Event, timeout: float, message: str) -> None:
    if not event.wait(timeout):
        raise TransientError(message)
