"""InfluxDB 1.x write API: ``POST /write?db=&rp=&precision=ns``, basic auth, gzip.

Works with every 1.x release (1.6 and 1.7 have no v2 endpoint) and with anything that speaks the
1.x API. One persistent HTTP connection, reopened after any error.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import socket
import urllib.parse

from ha_ingestor.config.model import InfluxConfig
from ha_ingestor.errors import TransientError
from writer.sinks import error_for_status, reason_text, ssl_context


class SinkV1:
    def __init__(self, config: InfluxConfig):
        self.config = config
        url = urllib.parse.urlsplit(config.url)
        self.https = url.scheme == "https"
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or (443 if self.https else 8086)
        base = url.path.rstrip("/")
        params = {"db": config.database, "precision": "ns"}
        if config.retention_policy:
            params["rp"] = config.retention_policy
        self.path = f"{base}/write?{urllib.parse.urlencode(params)}"
        self.ping_path = f"{base}/ping"
        self.target = f"database {config.database!r}" + (
            f" (retention policy {config.retention_policy!r})" if config.retention_policy else "")
        self.headers = {"Content-Type": "text/plain; charset=utf-8"}
        if config.username:
            token = f"{config.username}:{config.password or ''}".encode()
            self.headers["Authorization"] = "Basic " + base64.b64encode(token).decode()
        if config.gzip:
            self.headers["Content-Encoding"] = "gzip"
        self._ssl = ssl_context(config)
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.https:
                self._conn = http.client.HTTPSConnection(self.host, self.port,
                                                         timeout=self.config.timeout,
                                                         context=self._ssl)
            else:
                self._conn = http.client.HTTPConnection(self.host, self.port,
                                                        timeout=self.config.timeout)
        return self._conn

    def write(self, lines: list[bytes]) -> None:
        body = b"\n".join(lines) + b"\n"
        if self.config.gzip:
            body = gzip.compress(body, compresslevel=1)
        status, reason, retry_after = self._post(self.path, body)
        if status == 204 or status == 200:
            return
        raise error_for_status(status, reason, retry_after, self.target)

    def _post(self, path: str, body: bytes) -> tuple[int, str, str | None]:
        try:
            conn = self._connection()
            conn.request("POST", path, body=body, headers=self.headers)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException, socket.timeout) as exc:
            self.close()
            raise TransientError(f"cannot reach InfluxDB at {self.config.url}: "
                                 f"{exc or type(exc).__name__}") from None
        if response.will_close:
            self.close()
        return response.status, reason_text(data, response.reason), \
            response.getheader("Retry-After")

    def ping(self) -> bool:
        try:
            conn = self._connection()
            conn.request("GET", self.ping_path)
            response = conn.getresponse()
            response.read()
            return response.status == 204
        except (OSError, http.client.HTTPException):
            self.close()
            return False

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
