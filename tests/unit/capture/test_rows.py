"""Rows from the gateway's line and the version's spool record: the gateway's facts, the model's response only."""

from __future__ import annotations

import base64
import json
from typing import Any

from supervisor.capture.rows import COLUMNS, join, parse_logged
from supervisor.capture.spool import SpoolRecord
from supervisor.scoring.spool import INLINE_MAX, MAX_BODY


def rid(n: int) -> str:
    return f"{n:032x}"


def fields(n: int, **over: Any) -> dict[str, Any]:
    raw = {"i": rid(n), "t": 1764806400.250, "s": 200, "d": 0.050, "m": "0.040", "e": "ep", "n": "iris-1",
           "x": "ms_up_iris_1", "l": "", "f": "0.5", "r": "", "b": '{"inputs": [[1]], "client_request_id": "c-7"}'}
    raw.update(over)
    return raw


def nginx_line(raw: dict[str, Any]) -> str:
    """What ``log_format ms_capture escape=json`` writes: the values tab-separated, each escaped
    as inside a JSON string (quotes, backslashes and control characters; the rest as it is)."""
    return "\t".join(json.dumps(str(raw[k]), ensure_ascii=False)[1:-1] for k in "itsdmenxlfrb")


def line(n: int, **over: Any) -> str:
    return nginx_line(fields(n, **over))


def json_line(n: int, **over: Any) -> str:
    """The JSON form of the line, which the gateway wrote before 2026-12-04 (no carried answer)."""
    raw = fields(n, **over)
    raw.pop("r")
    return json.dumps(raw)


VERSIONS = {"ms_up_iris_1": ("iris", "1"), "ms_up_iris_2": ("iris", "2")}
IDS = {"ep": "id-ep"}


def test_a_row_has_the_gateways_facts_and_the_models_response() -> None:
    logged = parse_logged(line(1))
    assert logged is not None
    rows, used = join([logged], {("ms_up_iris_1", rid(1)): SpoolRecord(rid(1), 21, '{"predictions": [0]}')},
                      VERSIONS, IDS)
    assert used == {("ms_up_iris_1", rid(1))}
    (r,) = rows
    assert set(COLUMNS) | {"endpoint_id"} == set(r)
    assert r == {**r, "request_id": rid(1), "client_request_id": "c-7", "endpoint": "ep", "endpoint_id": "id-ep",
                 "served_entity": "iris-1", "model": "iris", "version": "1", "timestamp_ms": 1764806400200,
                 "date": "2025-12-04", "status_code": 200, "execution_time_ms": 40, "sampling_fraction": 0.5,
                 "request": '{"inputs": [[1]], "client_request_id": "c-7"}', "request_truncated": False,
                 "response": '{"predictions": [0]}', "response_size": 21, "response_truncated": False}


def test_a_record_from_another_versions_spool_is_not_used() -> None:
    logged = parse_logged(line(1))
    assert logged is not None
    rows, used = join([logged], {("ms_up_iris_2", rid(1)): SpoolRecord(rid(1), 6, "forged")}, VERSIONS, IDS)
    assert used == set() and rows[0]["response"] is None and rows[0]["response_size"] is None


def test_failures_large_bodies_and_repeats() -> None:
    lines = [parse_logged(x) for x in (
        line(1, s=502, m="-", x="ms_up_iris_1", b=""),  # the model died: no response, no time
        line(2, l=str(MAX_BODY + 1), b=""),  # Nginx kept a large body in a file: not logged
        line(2, s=500),  # the same request id again: the first line wins
        line(3, e="deleted-endpoint"),
        line(4, m="0.010, 0.030", b="not json"),  # two tries: the last one's time
    )]
    rows, _ = join([x for x in lines if x is not None],
                   {("ms_up_iris_1", rid(2)): SpoolRecord(rid(2), MAX_BODY + 9, None)}, VERSIONS, IDS)
    assert [r["request_id"] for r in rows] == [rid(1), rid(2), rid(4)]
    assert rows[0]["status_code"] == 502 and rows[0]["execution_time_ms"] is None and rows[0]["response"] is None
    assert rows[1]["request"] is None and rows[1]["request_truncated"] and rows[1]["request_size"] == MAX_BODY + 1
    assert rows[1]["response"] is None and rows[1]["response_truncated"] and rows[1]["response_size"] == MAX_BODY + 9
    assert rows[2]["execution_time_ms"] == 30 and rows[2]["client_request_id"] is None


def test_both_forms_of_the_line_give_the_same_row_and_any_body_comes_back_whole() -> None:
    for body in ('{"a": "tab\there, quote \\" and backslash \\\\"}', "plain", "", "line\u2028sep \u00e9 \x01"):
        tab, old = parse_logged(line(1, b=body)), parse_logged(json_line(1, b=body))
        assert tab is not None and tab == old and tab.request_body == body


def test_an_answer_carried_on_the_line_is_the_response_and_a_bad_one_is_none() -> None:
    answer = '{"predictions": ["caf\u00e9"]}'.encode()
    carried = base64.b64encode(answer).decode()
    spooled = {("ms_up_iris_1", rid(1)): SpoolRecord(rid(1), 3, "old")}
    rows, used = join([parse_logged(line(1, r=carried))], spooled, VERSIONS, IDS)  # type: ignore[list-item]
    assert (rows[0]["response"], rows[0]["response_size"]) == (answer.decode(), len(answer))
    assert used == {("ms_up_iris_1", rid(1))}  # a record of the same id is done with too
    for bad in ("not base64!", "-", "A" * (4 * INLINE_MAX)):
        logged = parse_logged(line(2, r=bad))
        assert logged is not None and logged.response is None


def test_malformed_lines_are_skipped() -> None:
    assert parse_logged("not json") is None
    assert parse_logged("{not json") is None
    assert parse_logged("\t".join(["x"] * 11)) is None  # one field short
    assert parse_logged(line(1, b="") + "\\u12") is None  # not an escape Nginx writes
    assert parse_logged(json_line(1, i="short")) is None
    assert parse_logged(line(1, i="short")) is None
    assert parse_logged(line(1, s="x")) is None
    logged = parse_logged(line(1, f="7"))
    assert logged is not None and logged.fraction == 1.0
