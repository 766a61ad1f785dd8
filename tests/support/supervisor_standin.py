"""A stand-in for the Home Assistant Supervisor, for the add-on's tests.

The real Supervisor cannot run here: it manages Docker containers, the host through D-Bus and the
HA Operating System, and Home Assistant Core itself. What the add-on uses of it is two endpoints,
and this server answers them the way the Supervisor's code does (home-assistant/supervisor,
``supervisor/api/proxy.py``, ``supervisor/api/services.py``, ``supervisor/api/utils.py``,
``supervisor/api/middleware/security.py``), with aiohttp like the Supervisor:

- ``GET /services/mqtt``: the token from ``X-Supervisor-Token``, ``X-Hassio-Key`` or
  ``Authorization: Bearer``; no token 401, an unknown token 403; an add-on without ``mqtt`` in its
  ``services`` 403 ``No access to mqtt service!``; no provider 400 ``Service not enabled``; else
  ``{"result": "ok", "data": {"addon", "host", "port", "ssl", "username", "password",
  "protocol"}}``.
- ``GET /core/websocket`` (and ``/core/api/websocket``): 502 when Core is not running; else it
  sends ``auth_required``, takes the add-on's ``access_token`` (or ``api_password``), answers
  ``auth_invalid`` for a token that is not an add-on's with ``homeassistant_api``, else ``auth_ok``;
  then connects to the real Home Assistant with its own token (``auth_required`` -> ``auth`` ->
  ``auth_ok``) and relays text frames both ways, refusing ``supervisor/*`` and ``hassio/*``
  commands from the add-on with an ``unauthorized`` result. Heartbeat every 30 s, as there.

    standin = SupervisorStandIn(ha_url=ha.url, ha_token=ha.token, addon_token="t",
                                mqtt={"host": "127.0.0.1", "port": 1883, ...}).start()
    standin.url            # http://127.0.0.1:<port>: SUPERVISOR_URL for the add-on
    standin.stop()
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field

import aiohttp
from aiohttp import WSMsgType, web

from tests.support.procs import free_port

DENIED_WS_TYPE_PREFIXES = ("supervisor/", "hassio/")
MAX_MESSAGE_SIZE_FROM_CORE = 64 * 1024 * 1024


@dataclass
class Seen:
    """What the stand-in was asked, for tests to check that traffic went through it."""

    service_requests: list[int] = field(default_factory=list)     # HTTP status of each answer
    ws_sessions: int = 0            # add-on connections authenticated and proxied to Core
    ws_auth_invalid: int = 0
    frames_to_core: int = 0
    frames_to_app: int = 0
    denied_commands: list[str] = field(default_factory=list)


class SupervisorStandIn:
    def __init__(self, ha_url: str, ha_token: str, addon_token: str, mqtt: dict | None = None,
                 services: tuple[str, ...] = ("mqtt:want",), homeassistant_api: bool = True,
                 addon_slug: str = "local_ha_ingestor"):
        self.ha_url = ha_url.rstrip("/")
        self.ha_token = ha_token
        self.addon_token = addon_token
        self.mqtt = mqtt
        self.services = services
        self.homeassistant_api = homeassistant_api
        self.addon_slug = addon_slug
        self.port = free_port()
        self.seen = Seen()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="supervisor-standin",
                                        daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "SupervisorStandIn":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        app = web.Application()
        app.add_routes([web.get("/services/mqtt", self._service_mqtt),
                        web.get("/core/websocket", self._websocket),
                        web.get("/core/api/websocket", self._websocket)])
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    # ---- /services/mqtt ----------------------------------------------------------------------
    async def _service_mqtt(self, request: web.Request) -> web.Response:
        response = self._service_answer(_token(request))
        self.seen.service_requests.append(response.status)
        return response

    def _service_answer(self, token: str | None) -> web.Response:
        if not token:
            return web.Response(status=401, text="401: Unauthorized")
        if token != self.addon_token:
            return web.Response(status=403, text="403: Forbidden")
        if not any(s.startswith("mqtt:") for s in self.services):
            return _error("No access to mqtt service!", 403)
        if self.mqtt is None:
            return _error("Service not enabled", 400)
        data = {"ssl": False, "protocol": "3.1.1", **self.mqtt, "addon": "core_mosquitto"}
        return web.json_response({"result": "ok", "data": data})

    # ---- /core/websocket ---------------------------------------------------------------------
    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        version = await self._core_version()
        if version is None:
            raise web.HTTPBadGateway
        server = web.WebSocketResponse(heartbeat=30)
        await server.prepare(request)
        await server.send_json({"type": "auth_required", "ha_version": version})
        try:
            message = await server.receive_json(timeout=10)
        except (asyncio.TimeoutError, TypeError, ValueError):
            return server
        token = message.get("api_password") or message.get("access_token")
        if token != self.addon_token or not self.homeassistant_api:
            self.seen.ws_auth_invalid += 1
            await server.send_json({"type": "auth_invalid", "message": "Invalid access"})
            return server
        await server.send_json({"type": "auth_ok", "ha_version": version})
        async with aiohttp.ClientSession() as session:
            client = await self._connect_core(session)
            if client is None:
                return server
            self.seen.ws_sessions += 1
            await self._relay(server, client)
        return server

    async def _core_version(self) -> str | None:
        """Core's version if it is running (the Supervisor's ``check_api_state``)."""
        headers = {"Authorization": f"Bearer {self.ha_token}"}
        try:
            async with aiohttp.ClientSession() as session, session.get(
                    f"{self.ha_url}/api/config", headers=headers,
                    timeout=aiohttp.ClientTimeout(total=10)) as response:
                config = await response.json() if response.status == 200 else {}
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return None
        return config.get("version") if config.get("state") == "RUNNING" else None

    async def _connect_core(self, session: aiohttp.ClientSession):
        ws_url = self.ha_url.replace("http", "ws", 1) + "/api/websocket"
        try:
            client = await session.ws_connect(ws_url, ssl=False,
                                              max_msg_size=MAX_MESSAGE_SIZE_FROM_CORE)
            first = await client.receive_json(timeout=10)
            if first.get("type") != "auth_required":
                raise ValueError(f"expected auth_required, got {first.get('type')}")
            await client.send_json({"type": "auth", "access_token": self.ha_token})
            reply = await client.receive_json(timeout=10)
            if reply.get("type") != "auth_ok":
                raise ValueError("AUTH NOT OK")
            return client
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, TypeError):
            return None

    async def _relay(self, server: web.WebSocketResponse, client) -> None:
        tasks = [asyncio.ensure_future(self._pipe(client, server, to_app=True)),
                 asyncio.ensure_future(self._pipe(server, client, to_app=False))]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for ws in (client, server):
            if not ws.closed:
                await ws.close()
        await asyncio.wait(tasks, timeout=10)

    async def _pipe(self, source, target, to_app: bool) -> None:
        while not source.closed and not target.closed:
            msg = await source.receive()
            if msg.type == WSMsgType.TEXT:
                denied = None if to_app else _denied_command(msg.data)
                if denied:
                    self.seen.denied_commands.append(denied[0])
                    await source.send_json({"id": denied[1], "type": "result", "success": False,
                                            "error": {"code": "unauthorized",
                                                      "message": "Unauthorized"}})
                    continue
                await target.send_str(msg.data)
                if to_app:
                    self.seen.frames_to_app += 1
                else:
                    self.seen.frames_to_core += 1
            elif msg.type == WSMsgType.BINARY:
                await target.send_bytes(msg.data)
            elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR):
                await target.close()
                return


def _token(request: web.Request) -> str | None:
    for header in ("X-Supervisor-Token", "X-Hassio-Key"):
        if request.headers.get(header):
            return request.headers[header]
    authorization = request.headers.get("Authorization")
    return authorization.split(" ")[-1] if authorization else None


def _error(message: str, status: int) -> web.Response:
    return web.json_response({"result": "error", "message": message}, status=status)


def _denied_command(data: str) -> tuple[str, object] | None:
    try:
        parsed = json.loads(data)
        kind = parsed.get("type")
        return (kind, parsed.get("id")) if kind and kind.startswith(DENIED_WS_TYPE_PREFIXES) \
            else None
    except (ValueError, AttributeError):
        return None
