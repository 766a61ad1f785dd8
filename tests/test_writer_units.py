"""Small pure pieces of the writer: HTTP status → error class, the progress line, line protocol."""

from __future__ import annotations

import pytest

from ha_ingestor.errors import PermanentError, TransientError
from writer.lineprotocol import make_line
from writer.sinks import AccessDenied, TooLarge, error_for_status, reason_text


@pytest.mark.parametrize("status, kind, words", [
    (400, PermanentError, "rejected the points (400): bad"),
    (422, PermanentError, "rejected the points (422)"),
    (413, TooLarge, "too large"),
    (401, AccessDenied, "refused the credentials for database 'home'"),
    (403, AccessDenied, "lacks write permission"),
    (404, AccessDenied, "has no database 'home'"),
    (429, TransientError, "429"),
    (500, TransientError, "500"),
    (503, TransientError, "503"),
])
def test_status_codes_map_to_the_three_outcomes(status, kind, words):
    error = error_for_status(status, "bad", "7", "database 'home'")
    assert isinstance(error, kind) and words in str(error)
    if kind is TransientError:
        assert error.retry_after == 7.0


def test_reason_text_reads_both_api_generations():
    assert reason_text(b'{"error":"partial write: field type conflict"}', "x") == \
        "partial write: field type conflict"
    assert reason_text(b'{"code":"not found","message":"bucket \\"b\\" not found"}', "x") == \
        'bucket "b" not found'
    assert reason_text(b"", "Bad Request") == "Bad Request"


def test_line_protocol_rejects_what_influxdb_would():
    with pytest.raises(ValueError, match="no fields"):
        make_line("m", {}, {}, 1)
    with pytest.raises(ValueError, match="finite"):
        make_line("m", {}, {"v": float("inf")}, 1)
    assert make_line("m", {"b": "2", "a": "", "c": "x y"}, {"v": 1.0, "s": "q\""}, 5) == \
        'm,b=2,c=x\\ y s="q\\"",v=1.0 5'
