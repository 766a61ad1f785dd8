"""One NATS connection, driven from the writer's synchronous code.

nats-py is asyncio only; the writer processes are plain threads. ``NatsLink`` runs an event loop
in a thread of its own and ``call(coroutine_function, timeout)`` runs one coroutine there and
waits for it: the one place where the two worlds meet.

Errors are classified here, at the boundary:

- refused credentials (``Authorization Violation``, an expired or revoked JWT), a publish or
  subscribe permission refused, a TLS handshake that fails to verify → ``AccessDenied``, whose
  message names the cause and the way we authenticated (never the secret);
- anything else that stops a call (no server reachable, a timeout, the connection lost, no stream
  answering) → ``TransientError``.

The connection reconnects by itself across the configured servers; when nats-py gives up, the
next call connects anew.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import nats
import nats.errors
import nats.js.errors

from ha_ingestor.config.fleet import NatsConfig
from ha_ingestor.errors import IngestorError, TransientError
from writer.sinks import AccessDenied

log = logging.getLogger("writer.nats")

RECONNECT_ATTEMPTS = 3          # per server, before nats-py gives up and the next call reconnects
RECONNECT_WAIT_S = 0.5
PING_INTERVAL_S = 10
AUTH_MARKERS = ("authorization violation", "authentication expired", "authentication timeout",
                "authentication revoked", "user authentication", "account authentication")
PERMISSION_MARKER = "permissions violation"
_RECENT_ERROR_S = 30.0
DEFAULT_MAX_PAYLOAD = 1024 * 1024


def redact_url(url: str) -> str:
    """A server URL without user, password or token."""
    parts = urlsplit(url)
    if not (parts.username or parts.password):
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, "***@" + netloc, parts.path, parts.query, parts.fragment))


def tls_context(config: NatsConfig) -> ssl.SSLContext | None:
    tls = config.tls
    if not tls.enabled:
        return None
    context = ssl.create_default_context(cafile=tls.ca_file)
    if tls.cert_file:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class NatsLink:
    """A NATS connection (and its JetStream context) on a private event loop."""

    def __init__(self, config: NatsConfig, name: str):
        self.config = config
        self.name = name
        self.servers = ", ".join(redact_url(url) for url in config.servers)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="nats-loop",
                                        daemon=True)
        self._thread.start()
        self._nc: Any = None
        self._js: Any = None
        self._errors: list[tuple[float, str]] = []      # (when, text) seen by error_cb
        self.closed = False

    # ---- running coroutines -----------------------------------------------------------------

    def call(self, function: Callable[[], Awaitable[Any]], timeout: float) -> Any:
        """Run ``function()`` on the loop; raise TransientError when it takes over ``timeout``
        seconds, or the classified error when it fails."""
        future = asyncio.run_coroutine_threadsafe(self._guarded(function, timeout), self._loop)
        try:
            return future.result(timeout + 5.0)
        except TimeoutError:
            future.cancel()
            raise TransientError(f"no answer from NATS ({self.servers}) within "
                                 f"{timeout:.0f} s") from None

    async def _guarded(self, function: Callable[[], Awaitable[Any]], timeout: float) -> Any:
        try:
            return await asyncio.wait_for(function(), timeout)
        except IngestorError:                 # classified already (or ours: a ConfigError)
            raise
        except asyncio.TimeoutError:
            raise self.classify(TimeoutError(f"no answer within {timeout:.0f} s")) from None
        except Exception as exc:  # every library error is classified here, at the boundary
            raise self.classify(exc) from None

    # ---- the connection ---------------------------------------------------------------------

    async def jetstream(self) -> Any:
        """The JetStream context of a live connection; connects when there is none."""
        if self._nc is None or self._nc.is_closed:
            await self._connect()
        return self._js

    async def connection(self) -> Any:
        await self.jetstream()
        return self._nc

    def max_payload(self) -> int:
        """The server's largest message (its ``max_payload``), once connected."""
        return self._nc.max_payload if self._nc is not None else DEFAULT_MAX_PAYLOAD

    async def _connect(self) -> None:
        if self._nc is not None:
            await self._discard()
        self._errors.clear()
        # bounded by us: nats-py 2.16 waits for ever after a failed TLS handshake
        deadline = self.config.connect_timeout * (len(self.config.servers) + 1)
        try:
            nc = await asyncio.wait_for(nats.connect(**self._options()), deadline)
        except asyncio.TimeoutError:
            raise self.classify(TimeoutError(f"not connected within {deadline:.0f} s")) \
                from None
        self._nc, self._js = nc, nc.jetstream(timeout=self.config.publish_timeout,
                                              publish_async_max_pending=100_000)
        log.info("connected to NATS at %s (%s)", redact_url(nc.connected_url.geturl()),
                 self.config.auth_method())

    def _options(self) -> dict:
        config = self.config
        options: dict[str, Any] = dict(
            servers=list(config.servers), name=self.name, connect_timeout=config.connect_timeout,
            allow_reconnect=True, max_reconnect_attempts=RECONNECT_ATTEMPTS,
            reconnect_time_wait=RECONNECT_WAIT_S, ping_interval=PING_INTERVAL_S,
            max_outstanding_pings=2, error_cb=self._on_error,
            disconnected_cb=self._on_disconnected, reconnected_cb=self._on_reconnected)
        context = tls_context(config)
        if context is not None:
            options["tls"] = context
        if config.user:
            options.update(user=config.user, password=config.password or "")
        elif config.token:
            options["token"] = config.token
        elif config.nkey_seed_file:
            options["nkeys_seed"] = config.nkey_seed_file
        elif config.creds_file:
            options["user_credentials"] = config.creds_file
        return options

    async def _on_error(self, exc: Exception) -> None:
        text = _describe(exc)
        self._errors.append((time.monotonic(), text))
        del self._errors[:-20]
        log.debug("NATS: %s", text)

    async def _on_disconnected(self) -> None:
        if not self.closed:
            log.warning("disconnected from NATS; reconnecting (%s)", self.servers)

    async def _on_reconnected(self) -> None:
        url = self._nc.connected_url.geturl() if self._nc and self._nc.connected_url else "?"
        log.info("reconnected to NATS at %s", redact_url(url))

    async def _discard(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        try:
            await nc.close()
        except Exception as exc:  # closing a broken connection: nothing left to save
            log.debug("closing the NATS connection: %s", exc)

    def reset(self) -> None:
        """Drop the connection; the next call connects anew (after a failed batch)."""
        if self._nc is not None:
            asyncio.run_coroutine_threadsafe(self._discard(), self._loop).result(10)

    def close(self) -> None:
        """Close the connection and end every task of the loop, then the loop itself."""
        if self.closed:
            return
        self.closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        except Exception as exc:  # the process is stopping; log and go on
            log.debug("closing NATS: %s", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _shutdown(self) -> None:
        if self._nc is not None:
            await self._discard()
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---- classification ---------------------------------------------------------------------

    def recent_errors(self) -> list[str]:
        now = time.monotonic()
        return [text for when, text in self._errors if now - when < _RECENT_ERROR_S]

    def classify(self, exc: BaseException) -> Exception:
        """The error class and message for a failed call (see the module's docstring)."""
        texts = [_describe(exc)] + self.recent_errors()
        for text in texts:
            lowered = text.lower()
            if any(marker in lowered for marker in AUTH_MARKERS):
                return AccessDenied(f"NATS at {self.servers} refused the credentials "
                                    f"({self.config.auth_method()}): {text}; check nats.user/"
                                    f"password, nats.token, nats.nkey_seed_file or "
                                    f"nats.creds_file")
            if PERMISSION_MARKER in lowered:
                return AccessDenied(f"NATS denied this user a subject it needs: {text}; allow "
                                    f"it in the server's permissions for this user")
            if "certificate verify failed" in lowered or "ssl" in lowered and "handshake" in lowered:
                return AccessDenied(f"TLS with NATS at {self.servers} failed: {text}; check "
                                    f"nats.tls.ca_file and the server's certificate")
        return TransientError(f"NATS at {self.servers}: {texts[0]}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, nats.errors.NoServersError):
        return "no server could be reached"
    if isinstance(exc, nats.js.errors.NoStreamResponseError):
        return "no JetStream stream answered (none captures the subject, or it has no leader)"
    if isinstance(exc, nats.js.errors.APIError):
        return f"JetStream: {exc.description or 'error'} (code {exc.code}, {exc.err_code})"
    text = str(exc).strip()
    if text.startswith("nats:"):             # the server's own -ERR, as nats-py words it
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
