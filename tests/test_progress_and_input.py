"""The pure parts behind ``queue status --watch``, the writer's progress display and
``ha-ingestor convert``: drain rate and ETA over a window, durations as people read them, and
every input form convert accepts (real HA frames from tests/data/ha-samples)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ha_ingestor.drainrate import DrainRate, duration, progress_text
from ha_ingestor.errors import ConfigError
from ha_ingestor.eventinput import from_mosquitto_sub, from_text

SAMPLES = Path(__file__).parent / "data" / "ha-samples"


def test_rate_is_measured_over_the_window_not_between_two_samples():
    rate = DrainRate(window=10)
    for second, backlog in enumerate([1000, 1000, 1000, 600, 600, 600, 200]):
        rate.add(backlog, at=float(second))
    assert rate.rate() == pytest.approx(800 / 6)
    assert rate.eta() == pytest.approx(200 / (800 / 6))


def test_growing_backlog_has_no_eta_and_empty_is_zero():
    rate = DrainRate(window=10)
    rate.add(10, at=0.0)
    rate.add(30, at=2.0)
    assert rate.rate() == -10 and rate.eta() is None
    rate.add(0, at=3.0)
    assert rate.eta() == 0.0


def test_old_samples_leave_the_window():
    rate = DrainRate(window=5)
    for second in range(20):
        rate.add(1000 - second * 10, at=float(second))
    assert rate.samples[0][0] >= 14 and rate.rate() == pytest.approx(10)


@pytest.mark.parametrize("seconds, text", [(None, "-"), (0, "0 s"), (45.4, "45 s"),
                                           (725, "12 min 5 s"), (3600, "1 h"),
                                           (12000, "3 h 20 min"), (187200, "2 d 4 h")])
def test_durations_read_like_people_write_them(seconds, text):
    assert duration(seconds) == text


def test_progress_text():
    assert progress_text(412000, 96000) == \
        "412 000 behind, draining 96 000/s, empty in about 4 s"
    assert progress_text(5000, -20) == "5 000 behind, growing by 20/s"
    assert progress_text(0, None) == "queue empty"


def test_every_real_frame_and_envelope_form_is_read():
    frames = [json.loads(p.read_text()) for p in sorted(SAMPLES.glob("event_*.json"))]
    envelope = {"src": "mqtt", "rx": 1, "topic": "t", "qos": 1, "retain": False, "p": "1",
                "pe": "utf8"}
    dead = {"id": 3, "source": "mqtt", "reason": "r", "at": 1, "event": envelope}
    text = "\n".join(json.dumps(f, indent=2) for f in frames) + "\n" + json.dumps(envelope) + \
        "\n" + json.dumps(dead) + "\n" + json.dumps([frames[0]["event"], {"type": "pong"}])
    given = list(from_text(text, received_ns=5))
    envelopes = [g.envelope for g in given if g.envelope]
    assert len(envelopes) == len(frames) + 3
    assert [e["event"] for e in envelopes[:len(frames)]] == [f["event"] for f in frames]
    assert envelopes[len(frames)] == envelope == envelopes[len(frames) + 1]
    assert [g.skipped for g in given if g.skipped] == ["a 'pong' frame carries no event"]


def test_text_that_is_not_json_is_named_by_line():
    with pytest.raises(ConfigError, match="input is not JSON at line 2"):
        list(from_text('{"src": "mqtt"}\n{oops'))


def test_mosquitto_sub_lines():
    given = list(from_mosquitto_sub("zigbee2mqtt/kitchen {\"t\": 1}\nstat/plug/POWER ON\n\n"
                                    "homeassistant_statestream/sun/sun/state\tabove_horizon\n"))
    assert [(g.envelope["topic"], g.envelope["p"]) for g in given] == [
        ("zigbee2mqtt/kitchen", '{"t": 1}'), ("stat/plug/POWER", "ON"),
        ("homeassistant_statestream/sun/sun/state", "above_horizon")]


def test_replay_progress_is_logged_without_a_terminal(caplog):
    from writer.progress import Progress
    now = [0.0]
    progress = Progress(threshold=1000, tty=False, clock=lambda: now[0])
    caplog.set_level("INFO", logger="writer")
    for backlog in (4000, 3000, 1500, 50):
        progress.update(backlog)
        now[0] += 5
    assert [r.getMessage() for r in caplog.records] == [
        "4 000 events behind: replaying",
        "3 000 behind, draining 200/s, empty in about 15 s",
        "1 500 behind, draining 250/s, empty in about 6 s",
        "caught up: 4 000 events behind at most, replayed in 15 s; 50 left"]
