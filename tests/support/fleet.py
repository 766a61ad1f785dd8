"""Helpers for the writer and fleet tests: filling queues the way the collectors do, configs
of a site and of a central writer, the stream as JetStream reports it, and the points of an
InfluxDB database as comparable rows."""

from __future__ import annotations

import asyncio
import json

import nats

from ha_ingestor import queue

DB = "fleet"


def site_overrides(servers: list[str], site: str, **nats_extra) -> dict:
    """ingestor() overrides of a site whose writer publishes to ``servers``."""
    return {"nats": {"publish": True, "servers": servers, "site": site, "publish_timeout": "5s",
                     "connect_timeout": "2s", **nats_extra},
            "influxdb": {"batch_size": 2000, "flush_interval": "100ms"},
            "schema": {"mqtt": {"presets": ["zigbee2mqtt"]}}}


def central_overrides(servers: list[str], influx_url: str, db: str = DB, **nats_extra) -> dict:
    """ingestor() overrides of a central writer: ``servers`` → ``influx_url``/``db``."""
    return {"nats": {"servers": servers, "ack_wait": "5s", "connect_timeout": "2s",
                     **nats_extra},
            "influxdb": {"api": "v1", "url": influx_url, "database": db, "batch_size": 5000,
                         "flush_interval": "200ms"}}


def fill(queue_dir, events: list[dict], per_item: int = 1000) -> int:
    """Append ``events`` the way the collectors do (items of up to ``per_item`` events, one
    queue file per source); returns the number of items."""
    producers: dict[str, queue.Producer] = {}
    items = 0
    try:
        for start in range(0, len(events), per_item):
            chunk = events[start:start + per_item]
            for source in ("ha", "mqtt"):
                part = [e for e in chunk if e["src"] == source]
                if part:
                    if source not in producers:
                        producers[source] = queue.Producer(queue_dir, source, 2**31)
                    producers[source].append(part)
                    items += 1
    finally:
        for producer in producers.values():
            producer.close()
    return items


def pending(queue_dir) -> tuple[int, int]:
    """(ready + in flight, dead) events over both queue files."""
    waiting = dead = 0
    for source in ("ha", "mqtt"):
        status = queue.read_status(queue_dir, source)
        if status:
            waiting += status.ready + status.in_flight
            dead += status.dead
    return waiting, dead


def queued(queue_dir) -> int:
    return pending(queue_dir)[0]


def jetstream_state(servers: list[str], stream: str = "HA_INGESTOR",
                    durable: str = "central") -> dict:
    """{"messages", "pending", "ack_pending", "dead"} as JetStream reports them now."""
    async def read():
        nc = await nats.connect(servers=servers, connect_timeout=2, allow_reconnect=False)
        try:
            js = nc.jetstream(timeout=5)
            info = await js.stream_info(stream)
            out = {"messages": info.state.messages, "last_seq": info.state.last_seq}
            consumer = await js.consumer_info(stream, durable)
            out.update(pending=consumer.num_pending, ack_pending=consumer.num_ack_pending,
                       redelivered=consumer.num_redelivered)
            out["dead"] = (await js.stream_info(f"{stream}_DEAD")).state.messages
            return out
        finally:
            await nc.close()
    return asyncio.run(read())


def points(influx, db: str = DB, site: str | None = None, site_tag: str = "site"
           ) -> list[tuple]:
    """Every point of ``db`` as (measurement, tags, time, fields), sorted. With ``site``: only
    that site's points, without the site tag (to compare with the direct path's points)."""
    rows = []
    try:
        measurements = [row["name"] for row in influx.query("SHOW MEASUREMENTS", db)]
    except RuntimeError:
        return []
    for measurement in measurements:
        name = measurement.replace("\\", "\\\\").replace('"', '\\"')
        result = influx._raw_query(f'SELECT * FROM "{name}" GROUP BY *', db)
        for series in result["results"][0].get("series", []):
            tags = {k: v for k, v in (series.get("tags") or {}).items() if v != ""}
            if site is not None and tags.pop(site_tag, None) != site:
                continue
            columns = series["columns"]
            for values in series["values"]:
                fields = {c: v for c, v in zip(columns[1:], values[1:]) if v is not None}
                rows.append((measurement, json.dumps(tags, sort_keys=True), values[0],
                             json.dumps(fields, sort_keys=True)))
    return sorted(rows)


def tag_values(influx, tag: str, db: str = DB) -> dict[str, int]:
    """Points per value of ``tag`` over every measurement."""
    counts: dict[str, int] = {}
    for measurement, tags, _time, _fields in points(influx, db):
        value = json.loads(tags).get(tag)
        counts[value] = counts.get(value, 0) + 1
    return counts
