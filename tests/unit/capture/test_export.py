"""Exports read back by pandas (and DuckDB, when installed) with the values and types stored."""

from __future__ import annotations

import io
from typing import Any

import pandas as pd

from supervisor.capture.export import jsonl, parquet
from supervisor.store import INFERENCE_COLUMNS


def row(n: int, **over: Any) -> dict[str, Any]:
    out = {"request_id": f"{n:032x}", "client_request_id": "c" if n % 2 else None, "endpoint": "ep",
           "served_entity": "iris-1", "model": "iris", "version": "1", "date": "2026-12-04",
           "timestamp_ms": 1764806400000 + n, "status_code": 200, "execution_time_ms": 4,
           "sampling_fraction": 0.5, "request": '{"inputs": [[1]]}', "request_size": 17,
           "request_truncated": False, "response": '{"predictions": ["é"]}', "response_size": 24,
           "response_truncated": False}
    out.update(over)
    return out


ROWS = [row(1), row(2, response=None, response_size=None, execution_time_ms=None, status_code=502),
        row(3, request=None, request_truncated=True, request_size=2_000_000)]


def test_json_lines_read_back_with_pandas() -> None:
    frame = pd.read_json(io.BytesIO(b"".join(jsonl(ROWS))), lines=True, dtype=False)
    assert list(frame.columns) == list(INFERENCE_COLUMNS)
    assert frame["request_id"].tolist() == [r["request_id"] for r in ROWS]
    assert frame["response"].tolist()[0] == '{"predictions": ["é"]}'
    assert frame["status_code"].tolist() == [200, 502, 200]
    assert frame["request_truncated"].tolist() == [False, False, True]


def test_a_json_line_holds_one_row_by_any_rule_of_what_a_line_is() -> None:
    body = '{"note": "a\u2028b\u2029c\u0085d"}'
    text = b"".join(jsonl([row(1, request=body), row(2)])).decode("utf-8")
    assert len(text.splitlines()) == 2  # str.splitlines() also breaks at U+2028, U+2029, U+0085
    frame = pd.read_json(io.StringIO(text), lines=True, dtype=False)
    assert frame["request"].tolist()[0] == body


def test_parquet_reads_back_with_pandas_with_types() -> None:
    frame = pd.read_parquet(io.BytesIO(parquet(ROWS)))
    assert list(frame.columns) == list(INFERENCE_COLUMNS)
    assert frame["timestamp_ms"].tolist() == [r["timestamp_ms"] for r in ROWS]
    assert str(frame["date"].iloc[0]) == "2026-12-04"
    assert frame["response"].isna().tolist() == [False, True, False]
    assert frame["request_size"].tolist() == [17, 17, 2_000_000]


def test_an_empty_table_still_has_its_columns() -> None:
    assert list(pd.read_parquet(io.BytesIO(parquet([]))).columns) == list(INFERENCE_COLUMNS)
    assert b"".join(jsonl([])) == b""
