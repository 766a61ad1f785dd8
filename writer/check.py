"""``config check --connect`` for InfluxDB: the writer's own sink sends a write request with no
points. InfluxDB checks the credentials, that the database (bucket) exists and that the user
(token) may write to it before it looks at the body: 204 (1.x) or 400 for the empty body (2.x)
means all three are fine; 401, 403 and 404 name what is wrong. Nothing is written."""

from __future__ import annotations

from ha_ingestor.errors import AuthError, PermanentError

from writer.sinks import AccessDenied, open_sink


def check_connection(config) -> str:
    """What InfluxDB accepted; raises AuthError (credentials, permission, missing database or
    bucket) or TransientError (not reachable)."""
    influx = config.influxdb
    sink = open_sink(influx)
    try:
        sink.write([])
    except AccessDenied as exc:
        raise AuthError(str(exc)) from None
    except PermanentError:
        pass                     # 2.x: "no data" for the empty body, after every check passed
    finally:
        sink.close()
    target = (f"bucket {influx.bucket!r} (org {influx.org!r})" if influx.api == "v2"
              else f"database {influx.database!r}")
    who = (f"user {influx.username!r}" if influx.api == "v1" and influx.username else
           "the token" if influx.api == "v2" else "anonymous writes")
    return f"InfluxDB at {influx.url} ({influx.api} API): {target} exists and accepts {who}"
