"""The HA test server is faithful to HA 2024.3.3: its frames have the shape (keys, key order,
value types) of the frames recorded from a real HA (tests/data/ha-samples)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import websocket

from tests.support.ha_test_server import iso

SAMPLES = Path(__file__).parent / "data" / "ha-samples"


def sample(name: str) -> dict:
    return json.loads((SAMPLES / f"{name}.json").read_text())


def shape(value):
    """Keys in order and value types, recursively (values themselves ignored; a null matches
    any scalar, as HA's nullable fields such as ``context.user_id`` do)."""
    if isinstance(value, dict):
        return [(key, shape(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if value is None or isinstance(value, str):
        return "scalar"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "number"
    return type(value).__name__


@pytest.fixture
def conn(ha_test_server):
    ws = websocket.create_connection(ha_test_server.url, timeout=10)
    yield ws
    ws.close()


def recv(ws) -> dict:
    return json.loads(ws.recv())


def login(ws, token: str) -> None:
    assert shape(recv(ws)) == shape(sample("auth_required"))
    ws.send(json.dumps({"type": "auth", "access_token": token}))
    assert shape(recv(ws)) == shape(sample("auth_ok"))


def test_frames_have_the_shape_of_real_ha_frames(ha_test_server, conn):
    login(conn, ha_test_server.token)
    conn.send(json.dumps({"id": 1, "type": "ping"}))
    assert shape(recv(conn)) == shape(sample("pong"))
    conn.send(json.dumps({"id": 2, "type": "no_such_command"}))
    assert shape(recv(conn)) == shape(sample("result_error_unknown_command"))
    conn.send(json.dumps({"id": 3, "type": "subscribe_events", "event_type": 42}))
    assert shape(recv(conn)) == shape(sample("result_error_invalid_format"))
    conn.send(json.dumps({"id": 4, "type": "subscribe_events"}))
    assert shape(recv(conn)) == shape(sample("result_subscribe_events_all"))
    conn.send(json.dumps({"id": 5, "type": "get_states"}))
    states = recv(conn)
    assert shape(states)[:3] == shape(sample("result_get_states"))[:3]
    assert shape(states["result"][0]) == shape(sample("result_get_states")["result"][0])
    ha_test_server.burst(8)
    events = [recv(conn) for _ in range(8)]
    real = sample("event_state_changed_input_number")
    number = next(e for e in events
                  if e["event"]["data"]["entity_id"].startswith("input_number."))
    assert shape(number) == shape(real)


def test_bad_token_gets_auth_invalid_then_the_connection_closes(ha_test_server, conn):
    recv(conn)
    conn.send(json.dumps({"type": "auth", "access_token": "wrong"}))
    assert recv(conn) == sample("auth_invalid")
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
        conn.recv()
        conn.recv()


def test_history_is_hass_compressed_form_without_start_state(ha_test_server, conn):
    login(conn, ha_test_server.token)
    ha_test_server.burst(16)
    entity_id = ha_test_server.entities[0].entity_id
    conn.send(json.dumps({"id": 1, "type": "history/history_during_period",
                          "start_time": "2020-01-01T00:00:00+00:00", "entity_ids": [entity_id],
                          "include_start_time_state": False, "significant_changes_only": False,
                          "no_attributes": False, "minimal_response": False}))
    rows = recv(conn)["result"][entity_id]
    assert [sorted(row) for row in rows] == [["a", "lu", "s"]] * len(rows)
    fired = [t for e, t in ha_test_server.fired_states if e == entity_id]
    assert [iso(row["lu"]) for row in rows] == fired


def test_ids_must_increase(ha_test_server, conn):
    login(conn, ha_test_server.token)
    conn.send(json.dumps({"id": 5, "type": "ping"}))
    recv(conn)
    conn.send(json.dumps({"id": 5, "type": "ping"}))
    error = recv(conn)
    assert error["error"]["code"] == "id_reuse" and ha_test_server.id_violations == 1


def test_runs_as_a_module(tmp_path):
    import sys

    from tests.support.procs import free_port, start_process, stop_process, wait_until

    port = free_port()
    proc = start_process([sys.executable, "-m", "tests.support.ha_test_server", "--port",
                          str(port), "--token", "T", "--rate", "50"], tmp_path / "server.log",
                         cwd=Path(__file__).parent.parent)
    try:
        wait_until(lambda: "HA test server on" in (tmp_path / "server.log").read_text(), 20,
                   "the test server")
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/api/websocket", timeout=10)
        login(ws, "T")
        ws.send(json.dumps({"id": 1, "type": "subscribe_events"}))
        recv(ws)
        assert recv(ws)["event"]["event_type"] == "state_changed"
        ws.close()
    finally:
        assert stop_process(proc) == 0
