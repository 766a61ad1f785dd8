"""One WebSocket connection to Home Assistant: connect, authenticate, then a reader thread that
dispatches every frame, command results for the caller and events for the collector.

Library exceptions are turned into ours here: a refused token is ``AuthError`` (exit 3, never
retried quickly: HA bans an IP after failed logins), everything about the network is
``TransientError`` (reconnect with backoff). Malformed frames and unknown message types are counted
and logged, never fatal.
"""

from __future__ import annotations

import itertools
import json
import logging
import socket
import ssl
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable

import websocket

from ha_ingestor import metrics
from ha_ingestor.config import HomeAssistantConfig, TlsConfig
from ha_ingestor.envelope import HA
from ha_ingestor.errors import AuthError, TransientError

log = logging.getLogger(__name__)

INVALID_LOG_EVERY_S = 10.0

EventSink = Callable[[list[dict], int], None]        # (events of one frame, receive time ns)
UnreadableSink = Callable[[Any, str, int], None]   # (raw frame, reason, receive time ns)


class CommandError(Exception):
    """HA answered a command with ``success: false``."""

    def __init__(self, command: str, code: str, message: str):
        super().__init__(f"{command}: {code}: {message}")
        self.command, self.code, self.message = command, code, message


def sslopt(tls: TlsConfig) -> dict[str, Any]:
    """websocket-client's ``sslopt`` for ``homeassistant.tls`` (wss:// URLs)."""
    options: dict[str, Any] = {"cert_reqs": ssl.CERT_REQUIRED if tls.verify else ssl.CERT_NONE,
                               "check_hostname": bool(tls.verify)}
    if tls.ca_file:
        options["ca_certs"] = tls.ca_file
    if tls.cert_file:
        options["certfile"] = tls.cert_file
        options["keyfile"] = tls.key_file
    return options


class HAConnection:
    """Use: ``connect()``, ``authenticate()``, ``start_reader()``, then ``request()``/``send()``
    from any thread; ``close()`` from any thread ends the reader."""

    def __init__(self, config: HomeAssistantConfig, on_events: EventSink,
                 on_unreadable: UnreadableSink | None = None):
        self.config = config
        self.on_events = on_events
        self.on_unreadable = on_unreadable
        self.ha_version: str | None = None
        self.subscriptions: set[int] = set()
        self.closed = threading.Event()
        self.close_reason = ""
        self._ws: websocket.WebSocket | None = None
        self._ids = itertools.count(1)
        self._send_lock = threading.Lock()
        self._pending: dict[int, tuple[str, Future]] = {}
        self._reader: threading.Thread | None = None
        self._invalid_logged_at = 0.0
        self._invalid = metrics.EVENTS_INVALID

    # -- connect and authenticate ---------------------------------------------------------------
    def connect(self) -> None:
        options: dict[str, Any] = {"skip_utf8_validation": True, "enable_multithread": True}
        if self.config.url.startswith("wss://"):
            options["sslopt"] = sslopt(self.config.tls)
        ws = websocket.WebSocket(**options)
        try:
            ws.connect(self.config.url, timeout=self.config.connect_timeout,
                       suppress_origin=True)
        except websocket.WebSocketBadStatusException as exc:
            raise TransientError(f"Home Assistant answered HTTP {exc.status_code} at "
                                 f"{self.config.url} (is homeassistant.url the WebSocket API, "
                                 f"ending in /api/websocket?)") from exc
        except ssl.SSLCertVerificationError as exc:
            raise TransientError(f"TLS certificate of {self.config.url} not trusted: "
                                 f"{exc.verify_message} (homeassistant.tls.ca_file, "
                                 f"homeassistant.tls.verify)") from exc
        except (OSError, websocket.WebSocketException) as exc:
            raise TransientError(f"cannot connect to {self.config.url}: "
                                 f"{_describe(exc)}") from exc
        self._ws = ws

    def authenticate(self) -> str:
        """auth_required -> auth -> auth_ok. Returns HA's version."""
        first = self._recv_json("auth_required")
        if first.get("type") != "auth_required":
            raise TransientError(f"expected auth_required from {self.config.url}, got "
                                 f"{str(first)[:200]}")
        self._send_raw({"type": "auth", "access_token": self.config.token or ""})
        reply = self._recv_json("auth_ok")
        kind = reply.get("type")
        if kind == "auth_invalid":
            raise AuthError(f"Home Assistant at {self.config.url} rejected the access token "
                            f"({reply.get('message', 'auth_invalid')}): set homeassistant.token "
                            f"to a valid long-lived access token (HA profile page -> Security)")
        if kind != "auth_ok":
            raise TransientError(f"unexpected answer to auth: {str(reply)[:200]}")
        self.ha_version = reply.get("ha_version")
        return self.ha_version or "?"

    def _recv_json(self, expected: str) -> dict:
        self._ws.settimeout(self.config.connect_timeout)
        try:
            opcode, data = self._ws.recv_data()
        except (OSError, websocket.WebSocketException) as exc:
            raise TransientError(f"no {expected} from {self.config.url}: "
                                 f"{_describe(exc)}") from exc
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            raise TransientError(f"Home Assistant closed the connection before {expected}")
        try:
            message = json.loads(data)
        except ValueError as exc:
            raise TransientError(f"malformed frame instead of {expected}: {data[:200]!r}") from exc
        return message if isinstance(message, dict) else {"type": None, "frame": message}

    # -- the reader thread ----------------------------------------------------------------------
    def start_reader(self) -> None:
        self._ws.settimeout(None)    # pings (a separate thread) detect a frozen HA
        self._reader = threading.Thread(target=self._read_loop, name="ha-reader", daemon=True)
        self._reader.start()

    def _read_loop(self) -> None:
        try:
            while True:
                opcode, data = self._ws.recv_data()
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    self._set_closed("Home Assistant closed the connection")
                    return
                self._dispatch_frame(data, time.time_ns())
        except (OSError, websocket.WebSocketException, AttributeError) as exc:
            self._set_closed(f"connection lost: {_describe(exc)}")
        except Exception as exc:  # a bug in dispatch must not leave a silent, dead reader
            log.exception("HA reader stopped on an unexpected error")
            self._set_closed(f"reader error: {exc!r}")

    def _dispatch_frame(self, data: bytes | str, rx_ns: int) -> None:
        try:
            text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
            payload = _FRAME_DECODER.decode(text)
        except (ValueError, RecursionError) as exc:   # not JSON, not UTF-8, nested too deeply
            kind = "too_deep" if isinstance(exc, RecursionError) else "malformed_json"
            self._count_invalid(kind, data)
            if self.on_unreadable is not None:
                self.on_unreadable(data, f"{kind}: {str(exc)[:200] or type(exc).__name__}",
                                   rx_ns)
            return
        messages = payload if isinstance(payload, list) else [payload]
        events = []
        for message in messages:
            if not isinstance(message, dict):
                self._count_invalid("not_an_object", message)
                continue
            kind = message.get("type")
            if kind == "event":
                event = message.get("event")
                if message.get("id") in self.subscriptions and isinstance(event, dict) \
                        and isinstance(event.get("event_type"), str):
                    events.append(event)
                else:
                    self._count_invalid("bad_event", message)
            elif kind in ("result", "pong"):
                self._resolve(message)
            else:
                self._count_invalid("unknown_type", message)
        if events:
            self.on_events(events, rx_ns)

    def _resolve(self, message: dict) -> None:
        pending = self._pending.pop(message.get("id"), None)
        if pending is None:
            self._count_invalid("unexpected_result", message)
            return
        command, future = pending
        if message.get("type") == "pong" or message.get("success"):
            future.set_result(message.get("result"))
            return
        error = message.get("error") or {}
        future.set_exception(CommandError(command, str(error.get("code", "?")),
                                          str(error.get("message", ""))))

    def _count_invalid(self, kind: str, sample: Any) -> None:
        self._invalid.labels(HA, kind).inc()
        now = time.monotonic()
        if now - self._invalid_logged_at >= INVALID_LOG_EVERY_S:
            self._invalid_logged_at = now
            log.warning("ignored a %s frame from Home Assistant (counted in "
                        "ha_ingestor_invalid_frames_total): %.200r", kind.replace("_", " "),
                        sample)

    # -- commands -------------------------------------------------------------------------------
    def send(self, message: dict) -> tuple[int, Future]:
        """Send a command with the next id (strictly increasing on this connection)."""
        future: Future = Future()
        with self._send_lock:
            msg_id = next(self._ids)
            self._pending[msg_id] = (str(message.get("type")), future)
            if message.get("type") == "subscribe_events":
                self.subscriptions.add(msg_id)   # before sending: events follow the result
            try:
                self._send_raw({"id": msg_id, **message})
            except TransientError:
                self._pending.pop(msg_id, None)
                raise
        return msg_id, future

    def request(self, message: dict, timeout: float) -> Any:
        """Send a command and wait for its result; CommandError when HA says no."""
        _, future = self.send(message)
        try:
            return future.result(timeout)
        except FutureTimeout as exc:
            raise TransientError(f"no answer to {message.get('type')} within "
                                 f"{timeout:.0f} s") from exc

    def _send_raw(self, message: dict) -> None:
        if self._ws is None or self.closed.is_set():
            raise TransientError(f"not connected ({self.close_reason or 'closed'})")
        try:
            self._ws.send(json.dumps(message))
        except (OSError, websocket.WebSocketException) as exc:
            raise TransientError(f"send failed: {_describe(exc)}") from exc

    # -- closing --------------------------------------------------------------------------------
    def alive(self) -> bool:
        return not self.closed.is_set()

    def close(self, reason: str = "closed by the collector") -> None:
        self._set_closed(reason)
        if self._ws is not None:
            self._ws.abort()
            self._ws.shutdown()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(5)

    def _set_closed(self, reason: str) -> None:
        if not self.closed.is_set():
            self.close_reason = reason
            self.closed.set()
        for msg_id in list(self._pending):
            pending = self._pending.pop(msg_id, None)
            if pending and not pending[1].done():
                pending[1].set_exception(TransientError(f"connection closed: {reason}"))


def _not_json(constant: str) -> None:
    """Python's parser takes NaN and Infinity, JSON has no such values (HA never sends them)."""
    raise ValueError(f"{constant} is not JSON")


_FRAME_DECODER = json.JSONDecoder(parse_constant=_not_json)   # made once: cheaper per frame


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (socket.timeout, websocket.WebSocketTimeoutException)):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:300] + "..."
