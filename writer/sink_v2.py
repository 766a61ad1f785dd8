"""InfluxDB 2.x write API (``/api/v2/write``) through influxdb-client, SYNCHRONOUS mode only.

The client's batching mode keeps points in memory and loses them on a crash; in SYNCHRONOUS mode
``write()`` returns only once the server answered, so the writer can ack the queue afterwards.
Serves InfluxDB 2.x, 3.x (v2-compatible endpoint), 1.8+ and VictoriaMetrics. The line protocol is
sent as text (``record=str``), never built with ``Point``.
"""

from __future__ import annotations

import urllib3
from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from ha_ingestor.config.model import InfluxConfig
from ha_ingestor.errors import TransientError
from writer.sinks import error_for_status, reason_text


class SinkV2:
    def __init__(self, config: InfluxConfig):
        self.config = config
        self.bucket = config.bucket or config.database
        self.org = config.org or "-"
        tls = config.tls
        options = {}
        if tls and tls.ca_file:
            options["ssl_ca_cert"] = tls.ca_file
        if tls and tls.cert_file:
            options["cert_file"] = tls.cert_file
            if tls.key_file:
                options["cert_key_file"] = tls.key_file
        self.client = InfluxDBClient(url=config.url, token=config.token or "", org=self.org,
                                     timeout=int(config.timeout * 1000),
                                     enable_gzip=config.gzip, retries=False,
                                     verify_ssl=tls.verify if tls else True, **options)
        self.write_api = self.client.write_api(write_options=SYNCHRONOUS)
        self.target = f"bucket {self.bucket!r} in org {self.org!r}"

    def write(self, lines: list[bytes]) -> None:
        try:
            self.write_api.write(bucket=self.bucket, org=self.org, record=b"\n".join(lines),
                                 write_precision=WritePrecision.NS)
        except ApiException as exc:
            reason = reason_text(exc.body, str(exc.reason or exc.status))
            retry_after = exc.headers.get("Retry-After") if exc.headers else None
            error = error_for_status(int(exc.status or 0), reason, retry_after, self.target)
            if exc.status == 404:
                error = type(error)(f"{error}, or the server has no v2 write API "
                                    "(InfluxDB 1.6 and 1.7 need influxdb.api: v1)")
            raise error from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransientError(f"cannot reach InfluxDB at {self.config.url}: {exc}") from None

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except Exception:   # ping() itself only logs; anything here means "not reachable"
            return False

    def close(self) -> None:
        self.client.close()
