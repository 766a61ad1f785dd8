"""A small Home Assistant WebSocket API client (websocket-client): auth, requests, event stream."""

from __future__ import annotations

import itertools
import json
import threading

import websocket


class HAError(RuntimeError):
    pass


class HAConnection:
    """One authenticated WebSocket connection. ``send`` is thread-safe; read with ``recv``."""

    def __init__(self, url: str, token: str, timeout: float = 10.0) -> None:
        self.ws = websocket.create_connection(url, timeout=timeout, enable_multithread=True)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        first = self.recv()
        if first.get("type") != "auth_required":
            raise HAError(f"expected auth_required, got {first}")
        self.ws.send(json.dumps({"type": "auth", "access_token": token}))
        reply = self.recv()
        if reply.get("type") != "auth_ok":
            raise HAError(f"HA refused the token: {reply}")

    def send(self, message: dict) -> int:
        with self._lock:
            message = {"id": next(self._ids), **message}
            self.ws.send(json.dumps(message))
        return message["id"]

    def recv(self) -> dict:
        return json.loads(self.ws.recv())

    def request(self, message: dict) -> object:
        """Send and wait for this request's result (only while nothing else reads)."""
        msg_id = self.send(message)
        while True:
            reply = self.recv()
            if reply.get("id") == msg_id and reply.get("type") == "result":
                if not reply.get("success"):
                    raise HAError(f"{message.get('type')} failed: {reply.get('error')}")
                return reply.get("result")

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:  # closing a dead socket: nothing left to do
            pass
