"""The one InfluxDB question ``verify`` asks: at which times does each entity have a point?

InfluxQL over ``GET /query`` (InfluxDB 1.x; 2.x and 3.x answer it too through their 1.x
compatibility API, with the token and the bucket as database), with ``influxdb.url``,
credentials and TLS as the writer uses them. Points are matched as HA's integration tags them:
``domain`` and ``entity_id`` (the object id), in any measurement, by the field every state point
has (``value`` for a numeric state, ``state`` otherwise).
"""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.parse
import urllib.request

from ha_ingestor.config.model import InfluxConfig
from ha_ingestor.errors import AuthError, IngestorError, TransientError
from writer.sinks import reason_text, ssl_context


class InfluxReader:
    def __init__(self, config: InfluxConfig):
        self.config = config
        self.database = config.bucket if config.api == "v2" else config.database
        self.headers = {"Accept": "application/json"}
        if config.api == "v2" and config.token:
            self.headers["Authorization"] = f"Token {config.token}"
        elif config.username:
            token = f"{config.username}:{config.password or ''}".encode()
            self.headers["Authorization"] = "Basic " + base64.b64encode(token).decode()
        self._ssl = ssl_context(config)

    def query(self, text: str) -> list[dict]:
        """The series of one InfluxQL statement (times in ns)."""
        params = {"db": self.database, "epoch": "ns", "q": text}
        if self.config.retention_policy:
            params["rp"] = self.config.retention_policy
        url = f"{self.config.url}/query?{urllib.parse.urlencode(params)}"
        request = urllib.request.Request(url, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout,
                                        context=self._ssl) as answer:
                data = json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            raise _http_error(exc, self.database) from None
        except (OSError, ValueError) as exc:
            raise TransientError(f"cannot query InfluxDB at {self.config.url}: {exc}") from None
        result = (data.get("results") or [{}])[0]
        if "error" in result:
            raise IngestorError(f"InfluxDB refused the query: {result['error']}")
        return result.get("series") or []

    def entity_times(self, entities: list[tuple[str, str]], start_ns: int, end_ns: int
                     ) -> dict[tuple[str, str], set[int]]:
        """(domain, object id) -> times (ns) of its points in [start_ns, end_ns)."""
        found: dict[tuple[str, str], set[int]] = {pair: set() for pair in entities}
        objects = sorted({object_id for _, object_id in entities})
        if not objects:
            return found
        pattern = "|".join(re.escape(name).replace("/", r"\/") for name in objects)
        text = (f'SELECT "state", "value" FROM /.*/ WHERE time >= {start_ns} AND '
                f'time < {end_ns} AND "entity_id" =~ /^({pattern})$/ '
                f'GROUP BY "domain", "entity_id"')
        for series in self.query(text):
            tags = series.get("tags") or {}
            key = (tags.get("domain", ""), tags.get("entity_id", ""))
            if key in found:
                found[key].update(int(row[0]) for row in series.get("values") or ())
        return found


def _http_error(exc: urllib.error.HTTPError, database: str) -> IngestorError:
    reason = reason_text(exc.read(), exc.reason)
    if exc.code in (401, 403):
        return AuthError(f"InfluxDB refused the credentials for reading {database!r} "
                         f"({exc.code}: {reason}); check influxdb.username/password or "
                         f"influxdb.token")
    if exc.code == 404:
        return IngestorError(f"InfluxDB has no query API or no {database!r} ({reason})")
    return TransientError(f"InfluxDB answered {exc.code} to a query: {reason}")
