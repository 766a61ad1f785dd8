"""The HA test server is faithful to every tested HA release: in each release's mode its frames
have the shape (keys, key order, value types) of the frames recorded from that real HA
(tests/data/ha-samples, and its 2025.4.4 folder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import websocket

from tests.support.ha_test_server import DEFAULT_PROTOCOL, HATestServer, iso
from tests.support.ha_venv import HA_VERSIONS

SAMPLES = Path(__file__).parent / "data" / "ha-samples"
SAMPLE_DIRS = {"2024.3.3": SAMPLES, "2025.4.4": SAMPLES / "2025.4.4"}


def sample(name: str, version: str = DEFAULT_PROTOCOL) -> dict:
    return json.loads((SAMPLE_DIRS[version] / f"{name}.json").read_text())


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


@pytest.fixture(params=HA_VERSIONS, ids=[f"as{v}" for v in HA_VERSIONS])
def server(request):
    """The test server speaking as each tested release."""
    srv = HATestServer(ha_version=request.param).start()
    yield srv
    srv.stop()


@pytest.fixture
def conn(server):
    ws = websocket.create_connection(server.url, timeout=10)
    yield ws
    ws.close()


def recv(ws) -> dict:
    return json.loads(ws.recv())


def login(ws, token: str, version: str = DEFAULT_PROTOCOL) -> None:
    assert recv(ws) == sample("auth_required", version)
    ws.send(json.dumps({"type": "auth", "access_token": token}))
    assert recv(ws) == sample("auth_ok", version)


def test_frames_have_the_shape_of_real_ha_frames(server, conn):
    version = server.ha_version
    login(conn, server.token, version)
    conn.send(json.dumps({"id": 1, "type": "ping"}))
    assert shape(recv(conn)) == shape(sample("pong", version))
    conn.send(json.dumps({"id": 2, "type": "no_such_command"}))
    assert shape(recv(conn)) == shape(sample("result_error_unknown_command", version))
    conn.send(json.dumps({"id": 3, "type": "subscribe_events", "event_type": 42}))
    assert shape(recv(conn)) == shape(sample("result_error_invalid_format", version))
    conn.send(json.dumps({"id": 4, "type": "subscribe_events"}))
    assert shape(recv(conn)) == shape(sample("result_subscribe_events_all", version))
    conn.send(json.dumps({"id": 5, "type": "get_states"}))
    states = recv(conn)
    real_states = sample("result_get_states", version)
    assert shape(states)[:3] == shape(real_states)[:3]
    real_number = next(s for s in real_states["result"]
                       if s["entity_id"].startswith("input_number."))
    assert shape(states["result"][0]) == shape(real_number)
    server.burst(8)
    events = [recv(conn) for _ in range(8)]
    real = sample("event_state_changed_input_number", version)
    number = next(e for e in events
                  if e["event"]["data"]["entity_id"].startswith("input_number."))
    assert shape(number) == shape(real)


def test_bad_token_gets_auth_invalid_then_the_connection_closes(server, conn):
    recv(conn)
    conn.send(json.dumps({"type": "auth", "access_token": "wrong"}))
    assert recv(conn) == sample("auth_invalid", server.ha_version)
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
        conn.recv()
        conn.recv()


def microsecond_exact(rows: list[dict]) -> list[bool]:
    return [row["lu"] == round(row["lu"], 6) for row in rows]


def test_history_is_hass_compressed_form_without_start_state(server, conn):
    version = server.ha_version
    login(conn, server.token, version)
    server.burst(64)
    entity_id = server.entities[0].entity_id
    conn.send(json.dumps({"id": 1, "type": "history/history_during_period",
                          "start_time": "2020-01-01T00:00:00+00:00", "entity_ids": [entity_id],
                          "include_start_time_state": False, "significant_changes_only": False,
                          "no_attributes": False, "minimal_response": False}))
    rows = recv(conn)["result"][entity_id]
    real = sample("result_history_during_period", version)["result"]["input_number.acc_temp_2"]
    assert [sorted(row) for row in rows] == [sorted(real[0])] * len(rows) == [["a", "lu", "s"]] * 8
    fired = [t for e, t in server.fired_states if e == entity_id]
    assert [iso(row["lu"]) for row in rows] == fired
    # HA 2024.3 recorded microsecond datetimes; since 2024.7 the recorder keeps time.time() whole.
    assert all(microsecond_exact(rows)) == all(microsecond_exact(real)) == (version == "2024.3.3")


def test_ids_must_increase(server, conn):
    login(conn, server.token, server.ha_version)
    conn.send(json.dumps({"id": 5, "type": "ping"}))
    recv(conn)
    conn.send(json.dumps({"id": 5, "type": "ping"}))
    error = recv(conn)
    assert error["error"]["code"] == "id_reuse" and server.id_violations == 1


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
